/**
 * The transaction context of the current async call chain (AsyncLocalStorage), so two transactions running
 * concurrently in one process never see each other's xid, branches or staged events.
 *
 * An initiator's block runs with the context of its transaction; a participant's handler runs with a context
 * built from the call's metadata (role 'participant'), so calls it makes onward carry the same transaction and
 * the branches they report travel back to the initiator in its own response trailers.
 */
import { contextSlot, DmtpError, FailedPreconditionError } from '../common';
import { InFlight } from './in-flight';
import { answeredByServer } from '../rpc/not-sent';
import type { BranchRef, StagedEvent } from '../proto/gen/dmtp/v1/types';
import type { ReportedBranch } from './tx-metadata';

export type TxRole = 'initiator' | 'participant';

export interface TxContext {
  readonly xid: string;
  /** host:port of the owning coordinator. */
  readonly coordinatorAddress: string;
  /** ms since the Unix epoch. */
  readonly deadlineAtMs: number;
  readonly role: TxRole;
  /** Participant: branch ids held up this call's chain, its own last (onward calls carry them, `MD.held`). */
  readonly held?: readonly string[];
  /** Branches reported in `dmtp-branch` trailers of the calls made in this context (with their incarnation). */
  readonly branches: ReportedBranch[];
  /** Events staged with `tx.publish` (initiator only). */
  readonly events: StagedEvent[];
  /** Running totals over `events` of `stagedEventBytes` and `loggedEventBytes`, kept by `tx.publish` alone. */
  stagedBytes?: number;
  loggedBytes?: number;
  /**
   * Set by a joined block's `rollback(reason)` or throw, or by a call whose work cannot be told apart from its
   * branch (see `callFailed`): the transaction then rolls back instead of committing.
   */
  rollbackOnly?: string;
  /**
   * Branches holding work of a call that failed (its handler's onward calls, reported on its error answer), by
   * `<instanceId>|<branchId>`, with why: such a branch must not reach Commit (`addFailedBranch`).
   */
  failedBranches?: Map<string, { ref: ReportedBranch; why: string }>;
  /** False once commit or rollback started: a call made in the context after that is refused, never sent. */
  active: boolean;
  /** Calls made in this context and not yet answered (commit waits for them: their branches belong to it). */
  calls?: InFlight;
}

const storage = contextSlot<TxContext>('tx');

/** The transaction of the current async context, if any. */
export function currentTx(): TxContext | undefined {
  return storage.get();
}

/** Runs `fn` with `ctx` as the current transaction (and only `fn` and what it starts). */
export function runInTx<T>(ctx: TxContext, fn: () => T): T {
  return storage.run(ctx, fn);
}

/** Runs `fn` outside any transaction (e.g. a call that must not enlist). */
export function runOutsideTx<T>(fn: () => T): T {
  return storage.run(undefined, fn);
}

/** Adds a branch reported by a callee, once per (instance, branch id). */
export function addBranch(ctx: TxContext, ref: ReportedBranch): void {
  const known: ReportedBranch | undefined = ctx.branches.find(
    (b) => b.branchId === ref.branchId && b.instanceId === ref.instanceId,
  );
  if (!known) ctx.branches.push(ref);
  else if (known.incarnation && ref.incarnation && known.incarnation !== ref.incarnation) {
    // The instance restarted between two calls of this branch: the branch was opened again, empty, and the
    // earlier calls' work died with the old process. Committing would apply the later calls alone.
    ctx.rollbackOnly ??=
      `branch ${ref.branchId} at ${ref.service} instance ${ref.instanceId} was lost: the instance restarted ` +
      'between calls of this transaction (the work of the calls before that is gone), so the transaction rolls back';
  }
  const failed = ctx.failedBranches?.get(branchKey(ref));
  if (failed) doomFailed(ctx, failed.ref, failed.why);
}

const branchKey = (ref: BranchRef) => `${ref.instanceId}|${ref.branchId}`;

/**
 * A branch holds work of a call that failed: a participant's handler made an onward call that did work there,
 * then failed (`why` names that call). The handler's own work was undone; the onward work cannot be undone alone.
 * If the branch is in the transaction — reported by another call, before or after — committing would apply half
 * of the failed call, so the transaction is rollback-only. A branch no other call reports stays out of Commit,
 * and its participant rolls it back at the deadline, as for any call that failed.
 */
export function addFailedBranch(ctx: TxContext, ref: ReportedBranch, why: string): void {
  if (ctx.branches.some((b) => branchKey(b) === branchKey(ref))) doomFailed(ctx, ref, why);
  else (ctx.failedBranches ??= new Map()).set(branchKey(ref), { ref, why });
}

function doomFailed(ctx: TxContext, ref: BranchRef, why: string): void {
  ctx.rollbackOnly ??=
    `${why}; its onward work at ${ref.service} instance ${ref.instanceId} sits in branch ${ref.branchId}, which ` +
    'this transaction holds, and cannot be undone alone, so the transaction rolls back';
}

/** Statuses of a call that was sent and may have run without its answer saying so. */
export const MAY_HAVE_RUN = new Set([1, 2, 4, 13, 14]); // CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE

/**
 * A call made in `ctx` failed. When it may have run (sent, and no answer said what happened: a timeout, a lost
 * connection, a report that could not be read), what it did cannot be told: its work at the instance it went to
 * joins that instance's branch of this transaction if it has or gets one, and its handler's onward calls may have
 * done work at other branches the transaction holds — work the caller never sees reported. Committing could apply
 * half of the call, so the transaction is rollback-only. (A failure the participant answered itself, it undid, and
 * reported its onward branches with: see `addFailedBranch`.)
 */
export function callFailed(ctx: TxContext, err: unknown): void {
  if (!(err instanceof DmtpError) || err.details.notSent === true || !MAY_HAVE_RUN.has(err.code)) return;
  // The participant's own answer: it failed the call after its handler and undid it (or rolled the branch back).
  if (answeredByServer(err)) return;
  const text = (v: unknown) => (typeof v === 'string' && v !== '' ? v : undefined);
  const where = text(err.details.instanceId) ?? text(err.details.address) ?? 'unknown';
  ctx.rollbackOnly ??=
    `a call to ${String(err.details.service ?? 'a service')} instance ${where} failed after it was sent ` +
    `(${err.message}): what it did there, or through onward calls at other branches of this transaction, ` +
    'cannot be told, so the transaction rolls back';
}

/** A call made in `ctx` started. */
export function callStarted(ctx: TxContext): void {
  (ctx.calls ??= new InFlight()).enter();
}

/** A call made in `ctx` was answered (its branch, if any, already added). */
export function callEnded(ctx: TxContext): void {
  ctx.calls?.leave();
}

/** Resolves once no call made in `ctx` is waiting for its answer. */
export async function whenIdle(ctx: TxContext): Promise<void> {
  if (!ctx.calls) return;
  // A call chained on one that just answered (`debit().then(() => credit())`, not awaited by the block) starts
  // some microtasks after that answer: one macrotask turn lets it start — and be waited for, or be refused and
  // make the transaction rollback-only — before the context counts as idle.
  do {
    await ctx.calls.whenIdle();
    await new Promise<void>((resolve) => setImmediate(resolve));
  } while (ctx.calls.size > 0);
}

/**
 * A call made in `ctx` after its commit or rollback began (or after the participant's handler answered): refused,
 * never sent. Whatever the caller meant it to do with the transaction's other work will not happen, so a
 * transaction still deciding rolls back instead of committing the rest without it.
 */
export function callRefused(ctx: TxContext, method: string): FailedPreconditionError {
  ctx.rollbackOnly ??= `the call ${method} was started after the transaction began to end, and was not sent`;
  return endedError(ctx, method);
}

/** The error of a call made in a transaction's context after its commit or rollback started. */
export function endedError(ctx: TxContext, method: string): FailedPreconditionError {
  if (ctx.role === 'participant') {
    return new FailedPreconditionError(
      `the handler that joined transaction ${ctx.xid} has answered: the onward call ${method} it started after ` +
        'that is not sent (its branch could no longer reach the initiator); await every onward call in the handler',
      { details: { xid: ctx.xid, method } },
    );
  }
  return new FailedPreconditionError(
    `transaction ${ctx.xid} is ending (commit or rollback started): the call ${method} made inside it is not sent; ` +
      'await every call before the block returns, or make it outside the transaction (runOutsideTx)',
    { details: { xid: ctx.xid, method } },
  );
}
