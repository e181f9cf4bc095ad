/**
 * How the transaction manager reaches participants: one interface, so the manager stays free of gRPC.
 * `participant-gateway.ts` implements it over grpc-js; unit tests use a fake. A rejection or a timeout counts
 * as a failure (phase 1: a NO vote; phase 2: retried).
 */
import type { BranchRef, Vote } from '../proto/gen/dmtp/v1/types';

export interface PrepareResult {
  vote: Vote;
  reason: string;
}

export interface CommitResult {
  /** For a one-phase commit: false (with a reason) means the branch rolled back. */
  committed: boolean;
  reason: string;
}

export interface ParticipantGateway {
  prepare(branch: BranchRef, xid: string, timeoutMs: number): Promise<PrepareResult>;
  commit(branch: BranchRef, xid: string, onePhase: boolean, timeoutMs: number): Promise<CommitResult>;
  rollback(branch: BranchRef, xid: string, reason: string, timeoutMs: number): Promise<void>;
  /** Releases connections; calls in flight fail. */
  close(): void;
}
