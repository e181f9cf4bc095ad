/**
 * The events module's typed errors. Each one extends a class of the shared tree (common/errors.ts), so it keeps
 * its gRPC status and `retriable` flag, and adds `details.reason`: a short, stable word a caller can branch on
 * and a delivery report carries (`'invalid-topic'`, `'not-serialisable'`, `'too-large'`, `'refused'`,
 * `'unavailable'`, `'topic-unavailable'`).
 */
import {
  InvalidArgumentError,
  ResourceExhaustedError,
  UnavailableError,
  type DmtpErrorOptions,
} from '../common';

/** Why an event was not delivered; the same word is in the error's `details.reason`. */
export type DeliveryFailureReason =
  'invalid-topic' | 'not-serialisable' | 'too-large' | 'refused' | 'unavailable' | 'topic-unavailable';

/** Every DeliveryFailureReason, in a fixed order (stats, metrics). */
export const DELIVERY_FAILURE_REASONS: readonly DeliveryFailureReason[] = [
  'invalid-topic',
  'not-serialisable',
  'too-large',
  'refused',
  'unavailable',
  'topic-unavailable',
];

function withReason(reason: DeliveryFailureReason, o: DmtpErrorOptions): DmtpErrorOptions {
  return { ...o, details: { ...(o.details ?? {}), reason } };
}

/** A topic name Kafka would reject (empty, '.', '..', longer than 249, or outside [a-zA-Z0-9._-]). */
export class InvalidTopicError extends InvalidArgumentError {
  readonly reason = 'invalid-topic' as const;
  constructor(message: string, options: DmtpErrorOptions = {}) {
    super(message, withReason('invalid-topic', options));
  }
}

/** A value that cannot be encoded (a BigInt, a circular structure, a function, undefined). */
export class NotSerialisableError extends InvalidArgumentError {
  readonly reason = 'not-serialisable' as const;
  constructor(message: string, options: DmtpErrorOptions = {}) {
    super(message, withReason('not-serialisable', options));
  }
}

/** An event larger than the producer's `maxEventBytes`. */
export class EventTooLargeError extends ResourceExhaustedError {
  readonly reason = 'too-large' as const;
  constructor(message: string, options: DmtpErrorOptions = {}) {
    super(message, withReason('too-large', options));
  }
}

/** Kafka could not be reached or did not acknowledge after kafkajs' own retries; retriable. */
export class KafkaUnavailableError extends UnavailableError {
  readonly reason = 'unavailable' as const;
  constructor(message: string, options: DmtpErrorOptions = {}) {
    super(message, withReason('unavailable', options));
  }
}

/**
 * The broker has no such topic (and does not create it: auto-create off) or refuses this client access to it;
 * retriable — an operator creates the topic or grants access — but the topic's own failure: the producer sends
 * other topics' events apart from it.
 */
export class TopicUnavailableError extends UnavailableError {
  readonly reason = 'topic-unavailable' as const;
  constructor(message: string, options: DmtpErrorOptions = {}) {
    super(message, withReason('topic-unavailable', options));
  }
}

/** The broker refuses the event itself for good (INVALID_RECORD: e.g. no key for a compacted topic; a policy). */
export class EventRefusedError extends InvalidArgumentError {
  readonly reason = 'refused' as const;
  constructor(message: string, options: DmtpErrorOptions = {}) {
    super(message, withReason('refused', options));
  }
}

export type DeliveryError =
  | InvalidTopicError
  | NotSerialisableError
  | EventTooLargeError
  | EventRefusedError
  | KafkaUnavailableError
  | TopicUnavailableError;

export function isDeliveryError(err: unknown): err is DeliveryError {
  return (
    err instanceof InvalidTopicError ||
    err instanceof NotSerialisableError ||
    err instanceof EventTooLargeError ||
    err instanceof EventRefusedError ||
    err instanceof KafkaUnavailableError ||
    err instanceof TopicUnavailableError
  );
}

/** What a failed check of the caller's input becomes: its own typed error, or NotSerialisableError. */
export function toInputError(err: unknown): DeliveryError {
  if (isDeliveryError(err)) return err;
  const text = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return new NotSerialisableError(`event could not be encoded: ${text}`, { cause: err });
}
