/**
 * The participant's durable record of its branches: ONE interface, implemented by a file store
 * (branch-store-file.ts) and a PostgreSQL table (branch-store-pg.ts), both run through one contract test.
 *
 * The guarantees of DESIGN.md live here, in `transition()` and the table below:
 * - a repeated commit or rollback is a no-op (`changed: false`);
 * - a rollback for a branch never seen is recorded (null rollback), so a late business call (`registered`) or
 *   `prepared` for it is refused with IllegalBranchTransitionError — no hanging branch;
 * - every change is durable when `transition()` resolves, and survives a restart.
 */
import { IllegalBranchTransitionError, BranchNotFoundError } from './errors';

export type BranchStatus = 'registered' | 'prepared' | 'committed' | 'rolled_back';

/** Legal moves. A move to the current state is a no-op, never an error. */
export const VALID_TRANSITIONS: Record<BranchStatus, readonly BranchStatus[]> = {
  registered: ['prepared', 'committed', 'rolled_back'],
  prepared: ['committed', 'rolled_back'],
  committed: [],
  rolled_back: [],
};

/** From nothing: a business call enlists (`registered`), a rollback before anything is a null rollback. */
export const VALID_FROM_ABSENT: readonly BranchStatus[] = ['registered', 'rolled_back'];

export const FINAL: readonly BranchStatus[] = ['committed', 'rolled_back'];

export interface BranchKey {
  xid: string;
  branchId: string;
}

export interface BranchRecord extends BranchKey {
  resource: string;
  status: BranchStatus;
  /** host:port of the owning coordinator, for in-doubt recovery ('' when unknown, e.g. a null rollback). */
  coordinatorAddress: string;
  /** The transaction's deadline, ms since the Unix epoch (0 when unknown). */
  deadlineAtMs: number;
  /** Why it was rolled back ('' otherwise). */
  reason: string;
  /** Adapter data that must survive a restart (e.g. a reservation id). */
  data: Record<string, string>;
  createdAtMs: number;
  updatedAtMs: number;
}

/** What a transition may set besides the status. */
export interface BranchPatch {
  resource?: string;
  coordinatorAddress?: string;
  deadlineAtMs?: number;
  reason?: string;
  /** Merged into the record's data. */
  data?: Record<string, string>;
}

export interface TransitionOptions {
  /**
   * The caller does not need this change to survive a crash (it may be lost with the process, e.g. enlisting a
   * branch whose work is volatile: after a restart an unknown branch is refused and rolled back just like one
   * recorded as `registered`). A store may resolve before the change is durable, or keep it in memory only
   * until the branch's next durable change, which then records the whole branch.
   */
  lazy?: boolean;
}

export interface TransitionResult {
  record: BranchRecord;
  /** False when the branch already was in the target state (a duplicate). */
  changed: boolean;
}

/** The participant instance a store is opened, or a resource started, for. */
export interface InstanceOwner {
  instanceId: string;
  /** The participant's service: shown with the instance id where a lock names its holder. */
  service?: string;
}

export interface BranchStore {
  /**
   * Loads or creates the durable state; call once before anything else. A participant passes itself as `owner`:
   * a store several processes can open (PgBranchStore's shared table) then refuses a second process with the same
   * instance id (FailedPreconditionError). FileBranchStore's lock is on its file, whoever opens it.
   */
  open(owner?: InstanceOwner): Promise<void>;
  /** Flushes and releases files/connections. */
  close(): Promise<void>;
  get(key: BranchKey): Promise<BranchRecord | undefined>;
  /**
   * Moves a branch to `to`, durably, following VALID_TRANSITIONS / VALID_FROM_ABSENT; throws
   * IllegalBranchTransitionError for a forbidden move and BranchNotFoundError for prepared/committed of a branch
   * never seen. Callers serialize transitions of one branch (the participant holds a per-branch lock).
   */
  transition(
    key: BranchKey,
    to: BranchStatus,
    patch?: BranchPatch,
    options?: TransitionOptions,
  ): Promise<TransitionResult>;
  /** Records data on a `registered` branch (e.g. the reservation made by the business call), durably. */
  setData(key: BranchKey, data: Record<string, string>): Promise<BranchRecord>;
  /** Branches in the given states (recovery). */
  list(statuses: readonly BranchStatus[]): Promise<BranchRecord[]>;
  /** Forgets final branches last changed before `beforeMs`; returns how many. */
  purge(beforeMs: number): Promise<number>;
}

/**
 * The one decision every store makes: what `transition(key, to)` does given the current record.
 * Returns 'noop', 'apply', or throws the typed error.
 */
export function decideTransition(
  key: BranchKey,
  current: BranchStatus | undefined,
  to: BranchStatus,
): 'noop' | 'apply' {
  if (current === to) return 'noop';
  const allowed = current === undefined ? VALID_FROM_ABSENT : VALID_TRANSITIONS[current];
  if (allowed.includes(to)) return 'apply';
  if (current === undefined) {
    throw new BranchNotFoundError(
      `branch ${key.branchId} of ${key.xid} is unknown: cannot move it to ${to}`,
      {
        details: { xid: key.xid, branchId: key.branchId, to },
      },
    );
  }
  throw new IllegalBranchTransitionError(
    `branch ${key.branchId} of ${key.xid} is ${current}: cannot move it to ${to}`,
    { details: { xid: key.xid, branchId: key.branchId, from: current, to } },
  );
}

/**
 * The record after applying `to` and `patch` to `current` (or to a fresh record): a new, frozen object (its
 * data too), so a store may hand out the records it keeps without copying them.
 */
export function applyTransition(
  key: BranchKey,
  current: BranchRecord | undefined,
  to: BranchStatus,
  patch: BranchPatch,
  nowMs: number,
): BranchRecord {
  const data = patch.data
    ? Object.freeze({ ...current?.data, ...patch.data })
    : (current?.data ?? EMPTY_DATA);
  return Object.freeze({
    xid: key.xid,
    branchId: key.branchId,
    resource: patch.resource ?? current?.resource ?? '',
    status: to,
    coordinatorAddress: patch.coordinatorAddress ?? current?.coordinatorAddress ?? '',
    deadlineAtMs: patch.deadlineAtMs ?? current?.deadlineAtMs ?? 0,
    reason: patch.reason ?? current?.reason ?? '',
    data,
    createdAtMs: current?.createdAtMs ?? nowMs,
    updatedAtMs: nowMs,
  });
}

const EMPTY_DATA: Record<string, string> = Object.freeze({});

export function branchKeyString(key: BranchKey): string {
  return `${key.xid}|${key.branchId}`;
}
