/**
 * The manager's in-memory picture of one live transaction, kept small (goal: 10,000 in flight well under
 * 256 MB): plain fields, branches in an array, timers only while they matter. `toTransaction` and `toRecord`
 * turn it into the wire view and the log record.
 */
import type { Timer } from '../common';
import {
  BranchState,
  TxState,
  Vote,
  type BranchRef,
  type StagedEvent,
  type Transaction,
} from '../proto/gen/dmtp/v1/types';
import type { TxRecord } from './log/tx-log';
import type { DeliveryProgress } from './relay';
import { isCommit } from './state-machine';

export interface BranchEntry {
  ref: BranchRef;
  state: BranchState;
  vote: Vote;
  reason: string;
  attempts: number;
  lastError: string;
  nextRetryAtMs: number;
  /** An operator settled it (phase-two.ts `settle`). */
  settled: boolean;
}

export interface Tx {
  xid: string;
  state: TxState;
  createdAtMs: number;
  deadlineAtMs: number;
  decidedAtMs: number;
  initiator: string;
  labels: Record<string, string>;
  abortReason: string;
  branches: BranchEntry[];
  events: StagedEvent[];
  eventsDelivered: boolean;
  /** Committed with staged events on a coordinator without an event sink: they wait in the record for one. */
  eventsWaitForSink?: boolean;
  /** The relay's delivery of the staged events, once under way (`tx show`: attempts, last error, next retry). */
  eventsProgress?: Readonly<DeliveryProgress>;
  /** A record of this transaction is in the log (it must be removed when the transaction is finished). */
  logged: boolean;
  /** The decision write is under way: the outcome can no longer be changed by a rollback. */
  decisionWriting: boolean;
  /** Set by Rollback/Resolve while phase 1 runs: abort instead of writing COMMIT. */
  abortRequested?: string;
  /** The commit (or abort) in progress, shared by duplicate Commit calls. */
  outcome?: Promise<TxOutcome>;
  deadlineTimer?: Timer;
  /** Phase-2 messages not acknowledged yet (-1 = phase 2 not started). */
  phase2Pending: number;
  /** Ends phase 2 (the record's removal follows); set while branches are waiting. */
  phase2Done?: () => void;
  /**
   * One phase, once its only branch answered that it can no longer tell (its record purged, DATA_LOSS): ends the
   * asking with an operator's decision instead (resolve).
   */
  decideOnePhase?: (committed: boolean, reason: string) => void;
}

/**
 * The longest abort reason kept. A reason comes from the wire (a Rollback's, a participant's abort vote: as long as
 * a request may be, megabytes) and a finished transaction's is remembered with its outcome, for up to
 * maxRemembered (50,000) transactions: unbounded, that was gigabytes.
 */
export const MAX_REASON_CHARS = 1_000;

/**
 * `reason` cut to MAX_REASON_CHARS, as a string of its own: V8's slice of a long string points into it and keeps
 * all of it alive (a 1 MB reason cut to 1,000 characters still held its megabyte).
 */
export function boundedReason(reason: string): string {
  if (reason.length <= MAX_REASON_CHARS) return reason;
  return Buffer.from(reason.slice(0, MAX_REASON_CHARS), 'utf16le').toString('utf16le');
}

export interface TxOutcome {
  state: TxState;
  abortReason: string;
}

export function newTx(xid: string, createdAtMs: number, deadlineAtMs: number): Tx {
  return {
    xid,
    state: TxState.TX_STATE_ACTIVE,
    createdAtMs,
    deadlineAtMs,
    decidedAtMs: 0,
    initiator: '',
    labels: {},
    abortReason: '',
    branches: [],
    events: [],
    eventsDelivered: false,
    logged: false,
    decisionWriting: false,
    phase2Pending: -1,
  };
}

export function newBranch(ref: BranchRef, state = BranchState.BRANCH_STATE_REGISTERED): BranchEntry {
  return {
    ref,
    state,
    vote: Vote.VOTE_UNSPECIFIED,
    reason: '',
    attempts: 0,
    lastError: '',
    nextRetryAtMs: 0,
    settled: false,
  };
}

export function toTransaction(tx: Tx, owner: string): Transaction {
  return {
    xid: tx.xid,
    state: tx.state,
    branches: tx.branches.map((b) => ({ ...b })),
    createdAtMs: tx.createdAtMs,
    deadlineAtMs: tx.deadlineAtMs,
    decidedAtMs: tx.decidedAtMs,
    initiator: tx.initiator,
    labels: { ...tx.labels },
    abortReason: tx.abortReason,
    eventsStaged: tx.events.length,
    eventsDelivered: tx.events.length > 0 && tx.eventsDelivered,
    owner,
    eventsAttempts: tx.eventsProgress?.attempts ?? 0,
    eventsLastError: tx.eventsWaitForSink
      ? `coordinator ${owner} has no event sink: the events wait in its record for a coordinator with one`
      : (tx.eventsProgress?.lastError ?? ''),
    eventsNextRetryAtMs: tx.eventsProgress?.nextRetryAtMs ?? 0,
  };
}

export function toRecord(tx: Tx, state: TxState, branches: BranchRef[], onePhase = false): TxRecord {
  return {
    ...(onePhase ? { onePhase } : {}),
    xid: tx.xid,
    state,
    branches,
    events: tx.events,
    createdAtMs: tx.createdAtMs,
    deadlineAtMs: tx.deadlineAtMs,
    decidedAtMs: tx.decidedAtMs,
    initiator: tx.initiator,
    labels: tx.labels,
    abortReason: tx.abortReason,
  };
}

/** A transaction as recovery rebuilds it from its log record (COMMITTING: branches prepared). */
export function fromRecord(r: TxRecord): Tx {
  const tx = newTx(r.xid, r.createdAtMs, r.deadlineAtMs);
  const commit = isCommit(r.state);
  tx.branches = r.branches.map((ref) => {
    const b = newBranch(
      ref,
      commit ? BranchState.BRANCH_STATE_PREPARED : BranchState.BRANCH_STATE_REGISTERED,
    );
    // A two-phase decision record lists the branches that voted PREPARED (read-only voters are left out).
    if (commit && !r.onePhase) b.vote = Vote.VOTE_PREPARED;
    return b;
  });
  tx.events = r.events;
  tx.decidedAtMs = r.decidedAtMs;
  tx.initiator = r.initiator;
  tx.labels = r.labels;
  tx.abortReason = r.abortReason;
  tx.logged = true;
  tx.decisionWriting = commit;
  return tx;
}
