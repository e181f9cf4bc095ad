/**
 * DMTP's typed error tree, shared by every module, and the one table that maps errors to and from gRPC status
 * codes. Every error has an explicit `name`, the ids that matter (`xid`, `service`, …) in `details`,
 * `retriable` (the retry loops read this flag, never the message), and the `cause` it wraps.
 */
import { status as Status } from '@grpc/grpc-js';

export type ErrorDetails = Record<string, string | number | boolean | undefined>;

export interface DmtpErrorOptions {
  details?: ErrorDetails;
  cause?: unknown;
  retriable?: boolean;
}

export class DmtpError extends Error {
  /** The gRPC status this error travels as. */
  readonly code: Status = Status.UNKNOWN;
  readonly retriable: boolean;
  readonly details: ErrorDetails;

  constructor(message: string, options: DmtpErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.details = options.details ?? {};
    this.retriable = options.retriable ?? false;
  }
}

/** Malformed or out-of-range input: the caller must change the request. */
export class InvalidArgumentError extends DmtpError {
  override readonly code = Status.INVALID_ARGUMENT;
}

/** The thing named (an xid, a service, a branch) does not exist. */
export class NotFoundError extends DmtpError {
  override readonly code = Status.NOT_FOUND;
}

/** The call is legal but not in the current state (e.g. enlist after commit). */
export class FailedPreconditionError extends DmtpError {
  override readonly code = Status.FAILED_PRECONDITION;
}

/** A limit was hit (branches per transaction, payload size, in-flight calls). */
export class ResourceExhaustedError extends DmtpError {
  override readonly code = Status.RESOURCE_EXHAUSTED;
}

/** A dependency (etcd, Kafka, a provider) cannot be reached now; trying again later may work. */
export class UnavailableError extends DmtpError {
  override readonly code = Status.UNAVAILABLE;
  constructor(message: string, options: DmtpErrorOptions = {}) {
    super(message, { retriable: true, ...options });
  }
}

/** The deadline passed before the work finished. */
export class DeadlineExceededError extends DmtpError {
  override readonly code = Status.DEADLINE_EXCEEDED;
}

/** The operation was aborted by a concurrent decision (e.g. a transaction aborted under the caller). */
export class AbortedError extends DmtpError {
  override readonly code = Status.ABORTED;
}

/** The caller cancelled. */
export class CancelledError extends DmtpError {
  override readonly code = Status.CANCELLED;
}

/** Records needed to answer are gone (e.g. a participant purged a branch's record): nobody can tell now. */
export class DataLossError extends DmtpError {
  override readonly code = Status.DATA_LOSS;
}

/** A bug or broken invariant inside DMTP. */
export class InternalError extends DmtpError {
  override readonly code = Status.INTERNAL;
}

/** The one table: gRPC status code → error class (the reverse of each class's `code`). */
const BY_CODE: Partial<Record<Status, new (message: string, options?: DmtpErrorOptions) => DmtpError>> = {
  [Status.INVALID_ARGUMENT]: InvalidArgumentError,
  [Status.NOT_FOUND]: NotFoundError,
  [Status.FAILED_PRECONDITION]: FailedPreconditionError,
  [Status.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [Status.UNAVAILABLE]: UnavailableError,
  [Status.DEADLINE_EXCEEDED]: DeadlineExceededError,
  [Status.ABORTED]: AbortedError,
  [Status.CANCELLED]: CancelledError,
  [Status.INTERNAL]: InternalError,
  [Status.DATA_LOSS]: DataLossError,
};

/** What a server sends for an error: a status code and details text (a non-DMTP error is INTERNAL). */
export function toStatus(err: unknown): { code: Status; details: string } {
  if (err instanceof DmtpError) return { code: err.code, details: err.message };
  const e = err as { code?: unknown; details?: unknown; message?: unknown };
  if (typeof e?.code === 'number' && e.code in Status && typeof e.details === 'string') {
    return { code: e.code as Status, details: e.details }; // already a gRPC status (e.g. relayed from a callee)
  }
  return { code: Status.INTERNAL, details: `internal error: ${String(e?.message ?? err)}` };
}

/** What a client makes of a status it received: the matching typed error. */
export function fromStatus(code: Status, details: string, extra: DmtpErrorOptions = {}): DmtpError {
  const Ctor = BY_CODE[code];
  if (Ctor) return new Ctor(details, extra);
  const err = new DmtpError(details, extra);
  (err as { code: Status }).code = code;
  return err;
}

/** True for errors a retry loop may try again. */
export function isRetriable(err: unknown): boolean {
  return err instanceof DmtpError ? err.retriable : false;
}

/**
 * A failure's message as one line for an operator: the first line, with grpc-js's "No connection established.
 * Last error: …" reduced to that last error, cut at 200 characters.
 */
export function oneLine(text: string): string {
  const last = /Last error: (?:Error: )?(.*?)(?:\. Resolution note:.*)?$/m.exec(text);
  const line = (last ? last[1] : text.split('\n')[0]).trim();
  return line.length > 200 ? line.slice(0, 199) + '…' : line;
}
