/**
 * The durable transaction log behind one interface. The etcd log (`etcd-log.ts`) is the default and the
 * durable one; the memory log serves unit tests. One contract test (test/support/tx-log-contract.ts) runs
 * against both.
 *
 * Presumed abort keeps the log small: the normal path writes one record per committing transaction (the
 * COMMITTING record with its branches and staged events: the commit point) and removes it once every branch
 * acknowledged and the events were delivered. Records in any other state are undecided and recovery aborts
 * them.
 *
 * A finished COMMITTED transaction's record is not simply removed: `finishCommitted` replaces it, in the same
 * write, with a small committed marker that expires by itself after about `outcomeRetentionSeconds` (between
 * 0.75× and 1× of it). A coordinator that no longer remembers the transaction in memory (restarted, taken over,
 * handed back) reads the marker, so QueryOutcome answers COMMIT instead of presuming abort. Aborted
 * transactions stay write-free: presumed abort already answers them.
 */
import type { BranchRef, StagedEvent, TxState } from '../../proto/gen/dmtp/v1/types';

export interface TxRecord {
  xid: string;
  state: TxState;
  /** The branches that need a phase-2 message (read-only voters are left out). */
  branches: BranchRef[];
  events: StagedEvent[];
  createdAtMs: number;
  deadlineAtMs: number;
  /** When the decision was taken (0 = undecided). */
  decidedAtMs: number;
  initiator: string;
  labels: Record<string, string>;
  abortReason: string;
  /**
   * A one-phase commit was (or may have been) sent to the transaction's only branch: its outcome is that
   * participant's, so recovery asks it again (a repeated one-phase Commit is idempotent) instead of aborting.
   */
  onePhase?: boolean;
}

/** What the log keeps of a finished committed transaction (see `finishCommitted`). */
export interface CommittedMarker {
  decidedAtMs: number;
}

export interface TxLog {
  /** 'etcd', 'memory', … for logs and the compiled config. */
  readonly kind: string;
  /**
   * Create-only write: resolves once the record is durable. Writing a record whose state equals the stored
   * one is a no-op (a retry after a lost answer); any other existing record rejects with LogConflictError.
   */
  create(record: TxRecord): Promise<void>;
  /** Replaces the record this log last wrote or loaded for the xid (compare-and-swap), once durable. */
  update(record: TxRecord): Promise<void>;
  /** Removes a finished transaction's record; idempotent. */
  remove(xid: string): Promise<void>;
  /**
   * A committed transaction finished: removes its record (if any) and writes its committed marker in ONE write
   * (fenced like every other); the marker expires after 0.75×–1× the log's outcome retention. Idempotent.
   */
  finishCommitted(xid: string, decidedAtMs: number): Promise<void>;
  /** The committed marker of a finished transaction, while retained; undefined otherwise (presumed abort). */
  committedMarker(xid: string): Promise<CommittedMarker | undefined>;
  /** Every record of transactions owned by `owner` (recovery). */
  load(owner: string): Promise<TxRecord[]>;
  get(xid: string): Promise<TxRecord | undefined>;
  close(): Promise<void>;
  /**
   * Writes so far and the durable batches that carried them (etcd txns, fsync'ed groups): their ratio is the
   * group-commit factor (metrics).
   */
  writeStats?(): LogWriteStats;
}

export interface LogWriteStats {
  /** Records written, removed or finished. */
  writes: number;
  /** Durable writes that carried them: etcd txns, or fdatasync'ed groups of lines. */
  batches: number;
}
