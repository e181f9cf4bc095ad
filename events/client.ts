/**
 * The kafkajs client as DMTP configures it: DMTP's structured logger instead of kafkajs' console logger, a
 * bounded retry budget (so "Kafka is down" becomes a typed, retriable error instead of an endless wait), and
 * the one function that turns a kafkajs error into DMTP's typed errors.
 */
import { Kafka, logLevel, type KafkaConfig, type LogEntry } from 'kafkajs';
import { InvalidArgumentError, logger, withoutUndefined } from '../common';
import { checkTogether, flagFromEnv, readFileFromEnv } from '../common/options';
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
  /**
   * TLS to the brokers: `true` (the system's roots) or Node's TLS options (`{ ca, cert, key, servername }`, PEM
   * contents); kafkajs' own `ssl`. Plaintext when absent.
   */
  ssl?: KafkaConfig['ssl'];
  /** SASL authentication (`{ mechanism: 'plain' | 'scram-sha-256' | 'scram-sha-512', username, password }`); kafkajs' own `sasl`. */
  sasl?: KafkaConfig['sasl'];
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

/** kafkajs' own SASL mechanisms: it caches an authenticator bound to the credentials on the object it is given. */
const BUILT_IN_SASL = new Set(['plain', 'scram-sha-256', 'scram-sha-512', 'aws', 'oauthbearer']);

/**
 * kafkajs writes its authenticator (`authenticationProvider`, bound to the credentials) into the `sasl` object it
 * is given, and fails on a frozen one. A config spread from a used object (`{ ...sasl, password }`) then carried the
 * first credentials' authenticator and logged in with them, whatever its own password said. Each client gets a
 * fresh copy, without a built-in mechanism's cached authenticator; the caller's object is never written.
 */
function saslCopy(sasl: KafkaConfig['sasl']): KafkaConfig['sasl'] {
  if (!sasl) return undefined;
  const copy = { ...sasl } as Record<string, unknown>;
  if (BUILT_IN_SASL.has(String(copy.mechanism).toLowerCase())) delete copy.authenticationProvider;
  return copy as unknown as KafkaConfig['sasl'];
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
    ssl: o.ssl,
    sasl: saslCopy(o.sasl),
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
    ssl,
    sasl,
  } = o;
  return {
    brokers,
    clientId,
    connectionTimeoutMs,
    requestTimeoutMs,
    requestRetries,
    initialRetryTimeMs,
    maxRetryTimeMs,
    ssl,
    sasl,
  };
}

/** Options as they may be logged: TLS and SASL said on or off (and the mechanism), never a key or a password. */
export function loggableClientOptions<T extends KafkaClientOptions>(
  o: T,
): Omit<T, 'ssl' | 'sasl'> & { ssl: 'on' | 'off'; sasl?: string } {
  const { ssl, sasl, ...rest } = o;
  return { ...rest, ssl: ssl ? 'on' : 'off', sasl: sasl ? sasl.mechanism : undefined };
}

/**
 * TLS and SASL to Kafka from the environment (empty when nothing is set): DMTP_KAFKA_CA, DMTP_KAFKA_CERT,
 * DMTP_KAFKA_KEY (PEM file paths; any of them turns TLS on), DMTP_KAFKA_TLS=1 (TLS with the system's roots),
 * DMTP_KAFKA_SASL_MECHANISM (`plain`, `scram-sha-256`, `scram-sha-512`) with DMTP_KAFKA_USER and
 * DMTP_KAFKA_PASSWORD. Read by the coordinator's main and the CLI.
 */
export function kafkaSecurityFromEnv(
  env: NodeJS.ProcessEnv = process.env,
): Pick<KafkaClientOptions, 'ssl' | 'sasl'> {
  const [ca, cert, key] = ['DMTP_KAFKA_CA', 'DMTP_KAFKA_CERT', 'DMTP_KAFKA_KEY'].map((n) =>
    readFileFromEnv(env, n),
  );
  checkTogether(['DMTP_KAFKA_CERT', 'DMTP_KAFKA_KEY'], [cert, key]);
  const tlsOn = flagFromEnv(env, 'DMTP_KAFKA_TLS');
  const ssl = ca || cert ? withoutUndefined({ ca, cert, key }) : tlsOn ? true : undefined;
  const mechanism = (env.DMTP_KAFKA_SASL_MECHANISM || '').toLowerCase();
  const username = env.DMTP_KAFKA_USER || undefined;
  const password = env.DMTP_KAFKA_PASSWORD || undefined;
  if (!mechanism) {
    if (username || password) {
      throw new InvalidArgumentError(
        'DMTP_KAFKA_USER and DMTP_KAFKA_PASSWORD need DMTP_KAFKA_SASL_MECHANISM',
        {
          details: { option: 'DMTP_KAFKA_SASL_MECHANISM' },
        },
      );
    }
    return { ssl };
  }
  if (mechanism !== 'plain' && mechanism !== 'scram-sha-256' && mechanism !== 'scram-sha-512') {
    throw new InvalidArgumentError(
      `DMTP_KAFKA_SASL_MECHANISM must be plain, scram-sha-256 or scram-sha-512, not '${mechanism}'`,
      { details: { option: 'DMTP_KAFKA_SASL_MECHANISM' } },
    );
  }
  if (!username || !password) {
    throw new InvalidArgumentError(
      'DMTP_KAFKA_SASL_MECHANISM needs DMTP_KAFKA_USER and DMTP_KAFKA_PASSWORD',
      {
        details: { option: username ? 'DMTP_KAFKA_PASSWORD' : 'DMTP_KAFKA_USER' },
      },
    );
  }
  return { ssl, sasl: { mechanism, username, password } as KafkaConfig['sasl'] };
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
