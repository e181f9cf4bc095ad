/**
 * The kafkajs client as DMTP configures it: DMTP's structured logger instead of kafkajs' console logger, a
 * bounded retry budget (so "Kafka is down" becomes a typed, retriable error instead of an endless wait), and
 * the one function that turns a kafkajs error into DMTP's typed errors.
 */
import { Kafka, logLevel, type KafkaConfig, type LogEntry } from 'kafkajs';
import { logger, withoutUndefined } from '../common';
import {
  EventRefusedError,
  EventTooLargeError,
  InvalidTopicError,
  isDeliveryError,
  KafkaUnavailableError,
  TopicUnavailableError,
  type DeliveryError,
} from './errors';

export interface KafkaClientOptions {
  /** Bootstrap brokers, `host:port`. */
  brokers: string[];
  /** Kafka client id (shows in broker logs and quotas). */
  clientId?: string;
  /** Time to open a TCP connection to a broker. */
  connectionTimeoutMs?: number;
  /** Time for a broker to answer one request. */
  requestTimeoutMs?: number;
  /** How many times kafkajs retries a failed connect or request before the error surfaces. */
  requestRetries?: number;
  /** First delay between kafkajs retries (it grows ×2 with jitter up to `maxRetryTimeMs`). */
  initialRetryTimeMs?: number;
  maxRetryTimeMs?: number;
}

export const CLIENT_DEFAULTS = {
  clientId: 'dmtp',
  connectionTimeoutMs: 3_000,
  requestTimeoutMs: 30_000,
  requestRetries: 5,
  initialRetryTimeMs: 300,
  maxRetryTimeMs: 10_000,
} as const;

const log = logger('events:kafkajs');

/**
 * kafkajs log entries go to DMTP's logger two levels down: kafkajs logs every retried connection failure as an
 * error, while DMTP reports what the caller sees (a failed delivery, a crash) at warn/error itself.
 */
function logCreator(_level: logLevel) {
  return ({ namespace, level, log: entry }: LogEntry) => {
    const { message, ...fields } = entry;
    const l = log.child(namespace || 'root');
    if (level === logLevel.ERROR) l.info(message, fields);
    else l.debug(message, fields);
  };
}

export function createKafka(options: KafkaClientOptions): Kafka {
  const o = { ...CLIENT_DEFAULTS, ...withoutUndefined(options), brokers: options.brokers };
  const config: KafkaConfig = {
    clientId: o.clientId,
    brokers: o.brokers,
    connectionTimeout: o.connectionTimeoutMs,
    requestTimeout: o.requestTimeoutMs,
    retry: {
      retries: o.requestRetries,
      initialRetryTime: o.initialRetryTimeMs,
      maxRetryTime: o.maxRetryTimeMs,
    },
    logLevel: logLevel.INFO,
    logCreator,
  };
  return new Kafka(config);
}

/** Just the connection part of a larger options object. */
export function clientOptions(o: KafkaClientOptions): KafkaClientOptions {
  const {
    brokers,
    clientId,
    connectionTimeoutMs,
    requestTimeoutMs,
    requestRetries,
    initialRetryTimeMs,
    maxRetryTimeMs,
  } = o;
  return {
    brokers,
    clientId,
    connectionTimeoutMs,
    requestTimeoutMs,
    requestRetries,
    initialRetryTimeMs,
    maxRetryTimeMs,
  };
}

const TOO_LARGE = new Set(['MESSAGE_TOO_LARGE', 'RECORD_LIST_TOO_LARGE', 'MESSAGE_SIZE_TOO_LARGE']);
/** The topic's own trouble, until an operator acts: no such topic (auto-create off), or no access to it. */
const TOPIC_UNAVAILABLE = new Set(['UNKNOWN_TOPIC_OR_PARTITION', 'TOPIC_AUTHORIZATION_FAILED']);
/** The event itself refused for good. */
const REFUSED = new Set(['INVALID_RECORD', 'POLICY_VIOLATION']);

/** The broker error type inside a kafkajs error (kafkajs wraps the last attempt's error after its retries). */
function protocolType(err: unknown, depth = 0): string | undefined {
  if (!err || typeof err !== 'object' || depth > 4) return undefined;
  const e = err as { type?: unknown; originalError?: unknown; cause?: unknown };
  if (typeof e.type === 'string') return e.type;
  return protocolType(e.originalError, depth + 1) ?? protocolType(e.cause, depth + 1);
}

/** Maps what kafkajs threw to a DMTP delivery error; anything not clearly the caller's fault is retriable. */
export function toDeliveryError(
  err: unknown,
  details: Record<string, string | number | undefined>,
): DeliveryError {
  if (isDeliveryError(err)) return err;
  const type = protocolType(err);
  const text = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  if (type && TOO_LARGE.has(type)) {
    return new EventTooLargeError(`the broker refused the event as too large (${type})`, {
      details,
      cause: err,
    });
  }
  if (type === 'INVALID_TOPIC_EXCEPTION') {
    return new InvalidTopicError(`the broker refused the topic name (${type})`, { details, cause: err });
  }
  if (type && TOPIC_UNAVAILABLE.has(type)) {
    return new TopicUnavailableError(
      `the broker has no such topic or refuses this client access to it (${type}): create the topic or grant ` +
        'access; the events wait and are sent again',
      { details, cause: err },
    );
  }
  if (type && REFUSED.has(type)) {
    return new EventRefusedError(`the broker refused the event (${type})`, { details, cause: err });
  }
  return new KafkaUnavailableError(`Kafka did not acknowledge: ${text}`, { details, cause: err });
}
