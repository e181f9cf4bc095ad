/**
 * The branch a participant's business handler works in, in AsyncLocalStorage (set by the server middleware):
 * `currentBranch()` gives its ids and the resource's handle (e.g. the pg client of the open transaction).
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

const storage = contextSlot<BranchScope>('branch');

export function runInBranch<T>(scope: BranchScope, fn: () => T): T {
  return storage.run(scope, fn);
}

/** The current branch, if the handler runs inside one. */
export function maybeBranch<H = unknown>(): BranchScope<H> | undefined {
  return storage.get() as BranchScope<H> | undefined;
}

/** The current branch; throws when the handler was not called inside a transaction for a resource. */
export function currentBranch<H = unknown>(resource?: string): BranchScope<H> {
  const b = storage.get();
  if (!b)
    throw new FailedPreconditionError('no transaction branch here: the call carried no DMTP transaction');
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
