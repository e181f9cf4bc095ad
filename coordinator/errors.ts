/**
 * The coordinator's typed errors. Each extends one of the shared classes of `common/errors`, so the one
 * `toStatus()` table maps it to a gRPC status without a second table here.
 */
import { FailedPreconditionError, InternalError, UnavailableError } from '../common';
import { TxState, txStateToJSON } from '../proto/gen/dmtp/v1/types';

/** A move the transition table does not allow, e.g. COMMITTED → ABORTING. */
export class IllegalTransitionError extends FailedPreconditionError {
  readonly xid: string;
  readonly from: TxState;
  readonly to: TxState;
  constructor(xid: string, from: TxState, to: TxState) {
    super(`transaction ${xid}: illegal transition ${txStateToJSON(from)} -> ${txStateToJSON(to)}`, {
      details: { xid, from: txStateToJSON(from), to: txStateToJSON(to) },
    });
    this.xid = xid;
    this.from = from;
    this.to = to;
  }
}

/**
 * A compare-and-swap write lost: the record is not what this log last saw (another writer, or a fence that
 * no longer holds). Not retriable: the writer must re-read before deciding anything.
 */
export class LogConflictError extends FailedPreconditionError {
  constructor(xid: string, message: string) {
    super(`transaction log conflict on ${xid}: ${message}`, { details: { xid } });
  }
}

/** The transaction log could not be reached or did not confirm a write; the write may or may not have landed. */
export class LogUnavailableError extends UnavailableError {}

/** The memory log was asked for outside tests without the explicit opt-in. */
export class UnsafeLogError extends InternalError {}

/**
 * HA: a write refused because its fence no longer holds — the writer lost its ownership to a taker. Not a
 * definite "no" about the transaction (an earlier attempt may have landed): callers hear UNAVAILABLE, and the
 * new owner has the answer.
 */
export class LogFencedError extends LogUnavailableError {}
