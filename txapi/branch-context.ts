/**
 * The branch a participant's business handler works in, in AsyncLocalStorage (set by the server middleware):
 * `currentBranch()` gives its ids and the resource's handle (e.g. the pg client of the open transaction).
 *
 * The branch is reachable only while the business call that opened the scope runs. AsyncLocalStorage passes
 * the scope on to everything the handler starts — a timer, a promise it does not await — and such work may run
 * after the call ended, when the branch is prepared or rolled back and its pg client back in the pool (in
 * autocommit, or inside whichever branch took that connection next). So each call holds the scope through a
 * small per-call object that is closed when the call settles, and a look-up after that is refused, as an
 * onward call started after the handler returned is. A handle taken during the call and kept (`const pg =
 * currentPg()`, used in a timer) is not covered: it is a plain reference the framework cannot revoke.
 *
 * A call the participant abandons (its handler still running at the branch's deadline plus grace, or at stop) is
 * closed the same way from outside (`closeAbandoned`): the handler runs on, but no longer in the branch.
 */
import { contextSlot, FailedPreconditionError } from '../common';

export interface BranchScope<H = unknown> {
  readonly xid: string;
  readonly branchId: string;
  readonly resource: string;
  readonly deadlineAtMs: number;
  /** The resource's handle for this branch (resources/pg.ts: a pg client inside the open transaction). */
  readonly handle: H;
  /** Records data that must survive a restart with the branch (e.g. a reservation id), durably. */
  record(data: Record<string, string>): Promise<void>;
}

/** One business call's hold on its branch: `open` turns false once the call settled, for good. */
interface BranchCall {
  readonly scope: BranchScope;
  open: boolean;
}

const storage = contextSlot<BranchCall>('branch');

/** Scopes whose call was abandoned: closed although the handler has not settled (a WeakSet: no clean-up). */
const abandoned = new WeakSet<BranchScope>();

/**
 * Closes `scope` for the call running in it, which the participant abandoned: from now on its handler's look-ups
 * of the branch throw FailedPreconditionError, as they would once the call had settled.
 */
export function closeAbandoned(scope: BranchScope): void {
  abandoned.add(scope);
}

/** Throws FailedPreconditionError once `scope`'s call was abandoned (its `record()` checks this). */
export function assertNotAbandoned(scope: BranchScope): void {
  if (abandoned.has(scope)) throw abandonedError(scope);
}

function abandonedError({ xid, branchId }: BranchScope): FailedPreconditionError {
  return new FailedPreconditionError(
    `branch ${branchId} of ${xid}: the call that ran in this branch was abandoned (still running at the ` +
      "transaction's deadline plus grace, or at the participant's stop) and the branch rolled back; work it " +
      'does now is outside the transaction',
    { details: { xid, branchId } },
  );
}

/**
 * Runs the business call `fn` in `scope`; what `fn` awaits sees the branch, and anything that looks it up
 * once `fn` settled (a timer or continuation `fn` left behind) gets FailedPreconditionError.
 */
export async function runInBranch<T>(scope: BranchScope, fn: () => Promise<T>): Promise<T> {
  const call: BranchCall = { scope, open: true };
  try {
    return await storage.run(call, fn);
  } finally {
    call.open = false;
  }
}

function scopeOf(call: BranchCall): BranchScope {
  if (abandoned.has(call.scope)) throw abandonedError(call.scope);
  if (!call.open) {
    const { xid, branchId } = call.scope;
    throw new FailedPreconditionError(
      `branch ${branchId} of ${xid}: the call that ran in this branch has ended; ` +
        'work started after it is outside the transaction',
      { details: { xid, branchId } },
    );
  }
  return call.scope;
}

/**
 * The current branch, if the handler runs inside one; throws FailedPreconditionError from work left behind by
 * a call that has ended (see the module comment).
 */
export function maybeBranch<H = unknown>(): BranchScope<H> | undefined {
  const call = storage.get();
  return call && (scopeOf(call) as BranchScope<H>);
}

/**
 * The current branch; throws when the handler was not called inside a transaction for a resource, or from work
 * left behind by a call that has ended (a handle taken during the call and used after it is not covered).
 */
export function currentBranch<H = unknown>(resource?: string): BranchScope<H> {
  const call = storage.get();
  if (!call)
    throw new FailedPreconditionError('no transaction branch here: the call carried no DMTP transaction');
  const b = scopeOf(call);
  if (resource !== undefined && b.resource !== resource) {
    throw new FailedPreconditionError(
      `this call's branch is on resource '${b.resource}', not '${resource}'`,
      {
        details: { xid: b.xid, branchId: b.branchId },
      },
    );
  }
  return b as BranchScope<H>;
}
