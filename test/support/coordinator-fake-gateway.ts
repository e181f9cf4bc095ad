/**
 * A FAKE ParticipantGateway for the manager's unit tests (no network): each branch behaves as its `behave`
 * entry says, and every call is recorded. Integration and fault tests use the real gRPC test participant
 * (test-participant.ts) instead.
 */
import { DataLossError, DeadlineExceededError, fromStatus } from '../../common';
import type { CommitResult, ParticipantGateway, PrepareResult } from '../../coordinator/gateway';
import { Vote, type BranchRef } from '../../proto/gen/dmtp/v1/types';

export interface FakeBranchBehaviour {
  /**
   * Phase-1 answer (default 'prepared'); 'hang' never answers; 'error' rejects; 'deadline' rejects with
   * DEADLINE_EXCEEDED (the call's own deadline passing first, as it can over real gRPC).
   */
  prepare?: 'prepared' | 'read-only' | 'abort' | 'error' | 'hang' | 'deadline';
  /** Phase-2 Commit/Rollback calls that fail before one succeeds. */
  failPhase2?: number;
  /** Every phase-2 call is refused with this status (e.g. INVALID_ARGUMENT: the participant refuses the ref). */
  refusePhase2?: number;
  /** Phase-2 calls wait until `answerHeld(branchId)` (a call still on its way); then they acknowledge. */
  holdPhase2?: boolean;
  /** Answer to a one-phase Commit (default 'commit'); 'forgotten': DATA_LOSS, the branch's record was purged. */
  onePhase?: 'commit' | 'rollback' | 'error' | 'forgotten';
  /** One-phase Commit calls that fail (answer lost) before the `onePhase` answer comes. */
  failOnePhase?: number;
}

export interface FakeCall {
  op: 'prepare' | 'commit' | 'rollback';
  xid: string;
  branchId: string;
  onePhase?: boolean;
}

export class FakeGateway implements ParticipantGateway {
  readonly calls: FakeCall[] = [];
  readonly behave = new Map<string, FakeBranchBehaviour>();
  private failed = new Map<string, number>();
  private held = new Map<string, (() => void)[]>();

  set(branchId: string, b: FakeBranchBehaviour): this {
    this.behave.set(branchId, b);
    return this;
  }

  /** Answers the held phase-2 calls of `branchId` (holdPhase2); returns how many there were. */
  answerHeld(branchId: string): number {
    const calls = this.held.get(branchId) ?? [];
    this.held.delete(branchId);
    for (const answer of calls) answer();
    return calls.length;
  }

  callsFor(xid: string, op?: FakeCall['op']): FakeCall[] {
    return this.calls.filter((c) => c.xid === xid && (!op || c.op === op));
  }

  async prepare(branch: BranchRef, xid: string): Promise<PrepareResult> {
    this.calls.push({ op: 'prepare', xid, branchId: branch.branchId });
    switch (this.behave.get(branch.branchId)?.prepare ?? 'prepared') {
      case 'prepared':
        return { vote: Vote.VOTE_PREPARED, reason: '' };
      case 'read-only':
        return { vote: Vote.VOTE_READ_ONLY, reason: '' };
      case 'abort':
        return { vote: Vote.VOTE_ABORT, reason: 'insufficient funds' };
      case 'error':
        throw new Error('participant unreachable');
      case 'hang':
        return new Promise<PrepareResult>(() => undefined);
      case 'deadline':
        throw new DeadlineExceededError(`${branch.address} /dmtp.v1.Participant/Prepare: deadline exceeded`);
    }
  }

  async commit(branch: BranchRef, xid: string, onePhase: boolean): Promise<CommitResult> {
    this.calls.push({ op: 'commit', xid, branchId: branch.branchId, onePhase });
    if (onePhase) {
      const lost = this.failed.get(`1pc:${branch.branchId}`) ?? 0;
      if (lost < (this.behave.get(branch.branchId)?.failOnePhase ?? 0)) {
        this.failed.set(`1pc:${branch.branchId}`, lost + 1);
        throw new Error('one-phase commit answer lost');
      }
      const b = this.behave.get(branch.branchId)?.onePhase ?? 'commit';
      if (b === 'error') throw new Error('participant unreachable');
      if (b === 'forgotten') throw new DataLossError(`branch ${branch.branchId} of ${xid} is not known here`);
      return b === 'commit'
        ? { committed: true, reason: '' }
        : { committed: false, reason: 'constraint violated' };
    }
    this.maybeFail(branch.branchId);
    await this.maybeHold(branch.branchId);
    return { committed: true, reason: '' };
  }

  async rollback(branch: BranchRef, xid: string): Promise<void> {
    this.calls.push({ op: 'rollback', xid, branchId: branch.branchId });
    this.maybeFail(branch.branchId);
    await this.maybeHold(branch.branchId);
  }

  private maybeHold(branchId: string): Promise<void> | undefined {
    if (!this.behave.get(branchId)?.holdPhase2) return undefined;
    return new Promise<void>((answer) =>
      this.held.set(branchId, [...(this.held.get(branchId) ?? []), answer]),
    );
  }

  private maybeFail(branchId: string): void {
    const refused = this.behave.get(branchId)?.refusePhase2;
    if (refused !== undefined) throw fromStatus(refused, `participant refuses branch ${branchId}`);
    const n = this.failed.get(branchId) ?? 0;
    if (n < (this.behave.get(branchId)?.failPhase2 ?? 0)) {
      this.failed.set(branchId, n + 1);
      throw new Error('participant temporarily unavailable');
    }
  }

  close(): void {}
}

export function branch(branchId: string, address = '127.0.0.1:1'): BranchRef {
  return { branchId, service: 'svc', instanceId: 'i1', address, resource: 'db' };
}
