/**
 * Telling a call that never reached its server from one that did, for the retry policy (a call never sent may be
 * retried elsewhere whatever it does; one that may have run only when idempotent).
 */
import { status as Status } from '@grpc/grpc-js';
import { toStatus } from '../common/errors';

/**
 * Failure texts of grpc-js that mean the request never left this process or was refused by the peer's HTTP/2
 * layer before any handler saw it: the pick found no connection, the stream was refused, the stream could not
 * be created, or the channel was already closed. Anything else may have reached the server.
 */
const NOT_SENT = [
  /^No connection established/,
  /^Stream refused by server/,
  /^Failed to start HTTP\/2 stream/,
  /^Channel has been shut down/,
];

/**
 * Trailer a DMTP server puts on every error status its handler (or middleware) answered, so a unary caller can
 * tell it from a status grpc-js made up for a broken or silent connection (the multiplexed path knows it from the
 * frame). A status without it reads as not answered: the cautious reading.
 */
export const ANSWERED_TRAILER = 'dmtp-answered';

/**
 * Trailer (unary) or frame metadata key (multiplexed path) a DMTP server puts on a refusal made before any handler
 * or middleware saw the call (`maxConcurrentCalls`, a stream's limits, a server shutting down): the caller may send
 * it to another instance whatever the call does, as one never sent.
 */
export const NOT_RUN_TRAILER = 'dmtp-not-run';

/**
 * Whether a failed call's status is one its server answered itself (a handler's error, a refusal) rather than a
 * broken or silent connection: the instance is alive. The transports mark it (`details.answered`): the
 * multiplexed one from the frame, the unary one from `ANSWERED_TRAILER`.
 */
export function answeredByServer(err: unknown): boolean {
  return (err as { details?: { answered?: unknown } })?.details?.answered === true;
}

/** Marks `err` as a status its server answered (see `answeredByServer`). */
export function markAnswered<E extends { details: Record<string, unknown> }>(err: E): E {
  err.details.answered = true;
  return err;
}

export function isNotSent(code: Status, details: string): boolean {
  if (code !== Status.UNAVAILABLE && code !== Status.INTERNAL) return false;
  return NOT_SENT.some((re) => re.test(details));
}

/**
 * The status a server answers for its handler's error. A handler that lets its own failed onward call through
 * would relay grpc-js's "not sent" text, and its caller would take a call that ran for one that never left:
 * such a text is marked as the server's, so it no longer reads as "not sent".
 */
export function serverStatus(err: unknown): { code: number; details: string } {
  const s = toStatus(err);
  return isNotSent(s.code, s.details)
    ? { code: s.code, details: `the server's own call failed: ${s.details}` }
    : s;
}
