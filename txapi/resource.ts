/**
 * What a participant's resource does in each step of a branch's life. The participant (participant.ts) owns
 * the order and the durable record; a resource only does the work: PostgreSQL prepared transactions
 * (resources/pg.ts), reservations (resources/reservation.ts), or handlers the application declares.
 *
 * `handle` is the branch's volatile work (e.g. the pg client holding the open transaction): present between
 * the first business call and prepare/rollback in this process, undefined after a restart or after prepare.
 */
import type { BranchKey, BranchRecord, InstanceOwner } from './branch-store';

export type PrepareVote = { vote: 'prepared' } | { vote: 'read_only' } | { vote: 'abort'; reason: string };

export interface OnePhaseResult {
  committed: boolean;
  reason?: string;
}

/** What a rollback knows beyond its reason. */
export interface RollbackInfo {
  /**
   * The branch's business call was abandoned: its handler was still running at the branch's deadline plus
   * `deadlineGraceMs`, or when `Participant.stop()` had waited `stopGraceMs`, and may still be using the handle
   * (a query under way, or one it sends later). Neither wait for the handle nor give it to anyone else: a ROLLBACK
   * queued behind a stuck query waits with it, and a pooled connection handed on would take the stuck handler's
   * later statements into another branch. PostgreSQL: the connection is closed, not pooled, and the server rolls
   * the transaction back as its session ends. Set for every rollback of such a branch, a retried one too.
   */
  readonly abandoned?: boolean;
}

export interface Resource<H = unknown> {
  /** Unique within the participant; part of branch ids: 1-24 characters of [A-Za-z0-9._-]. */
  readonly name: string;
  /**
   * The branch's work before prepare dies with the process (an open database transaction, memory, or state the
   * business call records with `record()` first): then enlisting need not be durable before the business call
   * runs (the branch store writes it lazily). Leave unset when `begin` or the business call change something
   * durable that only a rollback at restart would undo.
   */
  readonly volatileWork?: boolean;
  /**
   * Its one-step commit cannot tell a lost answer from a failure (a database COMMIT whose connection drops may
   * have committed). The participant then commits the only branch of a transaction as prepare, record, commit,
   * so a commit whose answer was lost is asked again and repeated instead of being reported as not committed;
   * `commit` is only ever called with onePhase false. Set it too for any resource whose work outlives the
   * process (the built-in PostgreSQL and reservation resources do): without it, a participant that dies between
   * the one-step commit and its record reports that lone branch not committed — its work "lost in a restart" —
   * although it committed.
   */
  readonly onePhaseByPrepare?: boolean;
  /**
   * Called once by `Participant.start()` (e.g. to check the database), with the participant's instance id: a
   * resource whose state other processes share (pgResource's prepared transactions) refuses a second process with
   * the same id there (FailedPreconditionError).
   */
  start?(owner?: InstanceOwner): Promise<void>;
  stop?(): Promise<void>;
  /** The first business call of a branch: start its work; the handle is what the business handler sees. */
  begin?(branch: BranchRecord): Promise<H>;
  /**
   * Optional, both or neither: each business call after a branch's first can be undone alone. `markCall` runs
   * before such a call (PostgreSQL: SAVEPOINT); when the call fails, `undoCall` takes out what it did (ROLLBACK
   * TO SAVEPOINT) and the branch goes on, its later calls, prepare and commit as if the failed call never ran.
   * Without them, or when either throws (a failed `markCall` fails the call and is never followed by `undoCall`),
   * a failed later call rolls the whole branch back (its prepare votes ABORT). A failed first call always rolls
   * its branch back: that branch never reached the initiator.
   */
  markCall?(branch: BranchRecord, handle: H | undefined): Promise<void>;
  undoCall?(branch: BranchRecord, handle: H | undefined): Promise<void>;
  /** Make the branch's work durable and ready to commit. Consumes the handle, whatever the vote. */
  prepare(branch: BranchRecord, handle: H | undefined): Promise<PrepareVote>;
  /**
   * Phase 2 commit of a prepared branch (onePhase false; must be idempotent), or prepare+commit in one step for
   * the only branch of a transaction (onePhase true; the answer says whether it committed; consumes the handle).
   * What it throws in phase 2 (and what `rollback` throws) is answered as ResourceFailedError (UNAVAILABLE: the
   * coordinator asks again), whatever gRPC status the error carried.
   */
  commit(branch: BranchRecord, handle: H | undefined, onePhase: boolean): Promise<OnePhaseResult | void>;
  /**
   * Undo the branch's work, prepared or not; idempotent, and a no-op for work that never happened. With
   * `info.abandoned`, see `RollbackInfo`: the handle may still be in use by a handler that never settled.
   */
  rollback(branch: BranchRecord, handle: H | undefined, reason: string, info?: RollbackInfo): Promise<void>;
  /**
   * Prepared branches the resource itself holds (PostgreSQL: rows of pg_prepared_xacts), prepared at least
   * `minAgeMs` ago. Recovery asks their coordinator, also about one of this instance that the branch store has no
   * record of at all (never voted by this process: the participant votes only once the record is written; a twin
   * with its own store may have), which is rolled back unasked only with no way to find the coordinator.
   */
  inDoubt?(minAgeMs: number): Promise<BranchKey[]>;
}

/** Declares an application resource (identity, for typing). */
export function defineResource<H>(resource: Resource<H>): Resource<H> {
  return resource;
}
