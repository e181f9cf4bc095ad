/**
 * The transaction API's typed errors. Each carries the ids that matter (`xid`, `branchId`) in `details` and
 * travels as the gRPC status of its base class (common/errors), so a participant's refusal reaches the
 * initiator as a clear status.
 */
import {
  AbortedError,
  DataLossError,
  DmtpError,
  FailedPreconditionError,
  NotFoundError,
  UnavailableError,
} from '../common';
import { status as Status } from '@grpc/grpc-js';
import type { TxOutcome } from './outcome';

/** `transaction()` inside a transaction, without `{ join: true }`. */
export class NestedTransactionError extends FailedPreconditionError {}

/** A call for a branch that is already rolled back (null rollback, deadline, or abort): no hanging branch. */
export class BranchRolledBackError extends AbortedError {}

/**
 * A business call that comes back to a branch held by a call up its own chain (A → B → A in one transaction,
 * same resource): that branch's lock is held by the caller waiting for this call, so it is refused at once.
 */
export class ReentrantBranchCallError extends FailedPreconditionError {}

/**
 * A resource's own failure in phase 2 (its commit, confirm, rollback or cancel threw), as the participant answers
 * it: UNAVAILABLE, so the coordinator asks again. Never the status the resource's error happened to carry (a
 * legacy system's NOT_FOUND would read as the protocol's "no such branch" and end the asking).
 */
export class ResourceFailedError extends UnavailableError {}

/**
 * A business call whose handler was still running when its branch's deadline plus `deadlineGraceMs` passed, or when
 * `Participant.stop()` had waited `stopGraceMs` for it: the participant stopped waiting for it and rolled its branch
 * back (the branch's Prepare votes ABORT, a later call is refused). ABORTED, as a rolled-back branch's refusal is:
 * the work is undone, not uncertain. The handler itself may still run; what it later does with its branch is refused.
 */
export class BusinessCallAbandonedError extends AbortedError {}

/** A business call for a branch that is already prepared or decided: its work is sealed. */
export class BranchSealedError extends FailedPreconditionError {}

/**
 * A business call for a branch whose rollback failed and is pending (a failed call's undo, a Rollback, the
 * deadline): the branch only rolls back now — its Prepare votes ABORT — so no more work is taken.
 */
export class BranchDoomedError extends BranchSealedError {}

/** A phase-2 call for a branch this participant has no record of. */
export class BranchNotFoundError extends NotFoundError {}

/**
 * A Prepare or Commit, unknown here, for a branch whose id names another instance (or a resource this participant
 * does not have): it reached the wrong instance (an address that went to this one), and nothing is recorded.
 * UNAVAILABLE — the branch's instance is not here — so the coordinator asks again and looks the instance up in its
 * registry; never NOT_FOUND ("finished long ago") or a one-phase "not committed", which would speak for a branch
 * this instance never had. (A Rollback of such a branch is NOT_FOUND, with nothing recorded.)
 */
export class BranchOfAnotherInstanceError extends UnavailableError {}

/**
 * A one-phase Commit asked again for a branch this participant no longer knows, of a transaction old enough
 * that its record may have been purged (`retentionMs`): it may have committed, and nothing here can tell. The
 * coordinator keeps asking and shows it; an operator decides (`dmtp tx resolve`).
 */
export class BranchOutcomeForgottenError extends DataLossError {}

/** A branch state change the transition table forbids (e.g. committed → rolled back). */
export class IllegalBranchTransitionError extends FailedPreconditionError {}

/** The transaction context of a call is past its deadline. */
export class TransactionExpiredError extends FailedPreconditionError {}

/**
 * The transaction did not commit: a participant voted ABORT, the coordinator aborted it, or the block
 * rolled it back. `outcome.reason` says why.
 */
export class TransactionAbortedError extends AbortedError {
  constructor(
    readonly xid: string,
    readonly outcome: Extract<TxOutcome, { status: 'aborted' }>,
    options: { cause?: unknown } = {},
  ) {
    super(`transaction ${xid} aborted: ${outcome.reason}`, { details: { xid }, cause: options.cause });
  }
}

/**
 * The coordinator could not be reached at the commit point: the transaction may have committed or not.
 * Ask later with `dmtp.outcomeOf(xid)`; participants learn the outcome on their own (in-doubt recovery).
 */
export class TransactionOutcomeUnknownError extends DmtpError {
  override readonly code = Status.UNAVAILABLE;
  constructor(
    readonly xid: string,
    cause: unknown,
  ) {
    super(`transaction ${xid}: outcome unknown (coordinator unreachable at the commit point)`, {
      details: { xid },
      cause,
      retriable: false,
    });
  }
}

/** Attaches the xid to an error thrown by a transaction block, without changing the error's type. */
export function withXid<E>(err: E, xid: string): E {
  if (err && typeof err === 'object') {
    try {
      Object.defineProperty(err, 'xid', { value: xid, enumerable: true, configurable: true, writable: true });
    } catch {
      // a frozen error keeps its shape; the xid is still logged by the caller
    }
  }
  return err;
}
