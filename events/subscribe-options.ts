/**
 * A subscription's options in their three stages: what the caller passes (`SubscribeOptions`), the defaults
 * (`SUBSCRIBE_DEFAULTS`, units in the names), and the checked, filled-in set the subscription runs with
 * (`compileSubscribeOptions`), which it logs at start.
 */
import { InvalidArgumentError, withoutUndefined, type BackoffOptions } from '../common';
import { CLIENT_DEFAULTS, type KafkaClientOptions } from './client';
import { DEDUPE_DEFAULTS } from './dedupe';
import type { EventFilter } from './filter';
import type { ReceivedEvent } from './received-event';
import { validateTopic } from './validation';

export interface HandlerContext {
  /** 1 for the first attempt, 2 for the first retry, … */
  attempt: number;
  group: string;
  /** Aborted when the subscription stops: a long handler may give up (its event is then redelivered). */
  signal: AbortSignal;
}

/** Handles one event; throwing (or rejecting) means "retry, then dead-letter". */
export type EventHandler = (event: ReceivedEvent, context: HandlerContext) => unknown;

export interface SubscribeOptions extends KafkaClientOptions {
  topics: string[];
  /** Consumer group: one consumer per partition inside it, every group sees every event. */
  group: string;
  handler: EventHandler;
  /** Header equality or a predicate, checked before the handler; non-matching events are skipped. */
  filter?: EventFilter;
  /** Retries after the first failed attempt before the event is dead-lettered. */
  retries?: number;
  /** Backoff between attempts (full jitter, see common/backoff). */
  backoff?: Partial<BackoffOptions>;
  /** Dead-letter topic: one name for all topics, or a function of the source topic; default `<topic>.dlq`. */
  deadLetterTopic?: string | ((topic: string) => string);
  /** Create the dead-letter topics at start if missing (needs the right to create topics). */
  createDeadLetterTopics?: boolean;
  /** Events published longer ago than this go to the dead-letter topic instead of the handler. */
  maxAgeMs?: number;
  /** Partitions handled concurrently (order is kept per partition, hence per key). */
  concurrency?: number;
  /** Drop events whose id was handled recently by this subscription (true: DEDUPE_DEFAULTS.windowSize ids). */
  dedupe?: boolean | { windowSize: number };
  /** Where a group without committed offsets starts: the oldest event (true) or new ones only (false). */
  fromBeginning?: boolean;
  /** kafkajs group timings. */
  sessionTimeoutMs?: number;
  heartbeatIntervalMs?: number;
  rebalanceTimeoutMs?: number;
  /** Most bytes fetched per partition per request. */
  maxBytesPerPartition?: number;
  /** Longest a fetch waits on the broker for new events. */
  maxWaitTimeMs?: number;
  /** Called for background failures (a consumer crash); they are logged either way. */
  onError?: (err: Error) => void;
}

export const SUBSCRIBE_DEFAULTS = {
  ...CLIENT_DEFAULTS,
  clientId: 'dmtp-consumer',
  retries: 3,
  backoff: { initialMs: 100, maxMs: 5_000, multiplier: 2 } as BackoffOptions,
  createDeadLetterTopics: true,
  concurrency: 1,
  fromBeginning: false,
  sessionTimeoutMs: 30_000,
  heartbeatIntervalMs: 3_000,
  rebalanceTimeoutMs: 60_000,
  maxBytesPerPartition: 1024 * 1024,
  maxWaitTimeMs: 500,
  dedupeWindowSize: DEDUPE_DEFAULTS.windowSize,
} as const;

export interface SubscriptionStats {
  /** Handler calls that succeeded. */
  handled: number;
  /** Events the filter skipped. */
  filtered: number;
  /** Events dropped as redeliveries of a recent id. */
  duplicates: number;
  /** Failed handler attempts that were retried. */
  retried: number;
  /** Events written to a dead-letter topic (handler failures and expired events). */
  deadLettered: number;
  /** Of which expired (older than maxAgeMs). */
  expired: number;
  /**
   * Events whose dead-letter copy the broker refused for good (even as a stub without value and headers):
   * logged as errors with their coordinates and skipped, so the partition moves on.
   */
  deadLetterRefused: number;
}

export type CompiledSubscribeOptions = Omit<typeof SUBSCRIBE_DEFAULTS, 'backoff'> &
  SubscribeOptions & { backoff: BackoffOptions; retries: number; concurrency: number };

/** Fills in the defaults and checks the options; throws InvalidArgumentError / InvalidTopicError. */
export function compileSubscribeOptions(options: SubscribeOptions): CompiledSubscribeOptions {
  const o = {
    ...SUBSCRIBE_DEFAULTS,
    ...withoutUndefined(options),
    backoff: { ...SUBSCRIBE_DEFAULTS.backoff, ...withoutUndefined(options.backoff ?? {}) },
  } as CompiledSubscribeOptions;
  if (!Array.isArray(o.topics) || o.topics.length === 0)
    throw new InvalidArgumentError('subscribe: no topics');
  o.topics.forEach((t) => validateTopic(t));
  if (typeof o.group !== 'string' || o.group.length === 0)
    throw new InvalidArgumentError('subscribe: no group');
  if (typeof o.handler !== 'function') throw new InvalidArgumentError('subscribe: handler is not a function');
  if (!Number.isInteger(o.retries) || o.retries < 0)
    throw new InvalidArgumentError('subscribe: retries must be ≥ 0');
  if (!Number.isInteger(o.concurrency) || o.concurrency < 1) {
    throw new InvalidArgumentError('subscribe: concurrency must be ≥ 1');
  }
  if (o.maxAgeMs !== undefined && !(o.maxAgeMs > 0))
    throw new InvalidArgumentError('subscribe: maxAgeMs must be > 0');
  const b = o.backoff;
  // A NaN delay would never run out: the retry would wait for ever, heartbeating.
  if (!(b.initialMs > 0 && b.maxMs >= b.initialMs && b.multiplier >= 1 && Number.isFinite(b.maxMs))) {
    throw new InvalidArgumentError(
      `subscribe: backoff needs 0 < initialMs ≤ maxMs (finite) and multiplier ≥ 1, got ${JSON.stringify(b)}`,
    );
  }
  return o;
}
