/**
 * A subscription's options in their three stages: what the caller passes (`SubscribeOptions`), the defaults
 * (`SUBSCRIBE_DEFAULTS`, units in the names), and the checked, filled-in set the subscription runs with
 * (`compileSubscribeOptions`), which it logs at start.
 */
import {
  checkOptionalBoolean,
  checkWholeNumber,
  InvalidArgumentError,
  MAX_TIMER_MS,
  withoutUndefined,
  type BackoffOptions,
} from '../common';
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
  /**
   * `false`: subscribing never makes the broker create a topic (when its `auto.create.topics.enable` would): a
   * topic it does not have fails `subscribe()` with TopicUnavailableError naming it, before anything is created
   * or joined, and the dead-letter producer creates no topic either. Default `true` (kafkajs' default).
   */
  allowAutoTopicCreation?: boolean;
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
  /**
   * How long `stop()` waits for handlers still running (their signal is aborted at once). A handler still running
   * after it is abandoned: its event is not committed (whoever gets the partition next handles it again), and
   * stop goes on. The handler itself cannot be stopped; what it does afterwards is ignored.
   */
  stopGraceMs?: number;
  /** Called for background failures (a consumer crash); they are logged either way. */
  onError?: (err: Error) => void;
  /**
   * OpenTelemetry: each handler attempt in a CONSUMER span `process <topic>`, child of the trace context the event
   * carries (events/tracing.ts). Default off.
   */
  tracing?: boolean;
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
  stopGraceMs: 10_000,
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
  for (const k of ['tracing', 'allowAutoTopicCreation'] as const) checkOptionalBoolean('subscribe', k, o[k]);
  o.topics.forEach((t) => validateTopic(t));
  if (typeof o.group !== 'string' || o.group.length === 0)
    throw new InvalidArgumentError('subscribe: no group');
  if (typeof o.handler !== 'function') throw new InvalidArgumentError('subscribe: handler is not a function');
  checkWholeNumber('subscribe', 'retries', o.retries, 0, Number.MAX_SAFE_INTEGER);
  checkWholeNumber('subscribe', 'concurrency', o.concurrency, 1, Number.MAX_SAFE_INTEGER);
  // kafkajs takes any number here: 0 or less heartbeats without pause, NaN makes timers fire at once.
  for (const k of ['heartbeatIntervalMs', 'sessionTimeoutMs', 'rebalanceTimeoutMs', 'stopGraceMs'] as const)
    checkWholeNumber('subscribe', k, o[k], 1, MAX_TIMER_MS);
  // Int32 fields of the fetch request; a fetch may wait 0 ms (answer at once).
  checkWholeNumber('subscribe', 'maxBytesPerPartition', o.maxBytesPerPartition, 1, MAX_INT32);
  checkWholeNumber('subscribe', 'maxWaitTimeMs', o.maxWaitTimeMs, 0, MAX_INT32);
  if (o.heartbeatIntervalMs >= o.sessionTimeoutMs) {
    // kafkajs refuses it too, but with its own untyped error.
    throw new InvalidArgumentError(
      `subscribe: heartbeatIntervalMs (${o.heartbeatIntervalMs}) must be less than sessionTimeoutMs ` +
        `(${o.sessionTimeoutMs}); about a third of it is usual`,
      { details: { option: 'heartbeatIntervalMs' } },
    );
  }
  checkDedupe(o);
  if (o.maxAgeMs !== undefined && !(o.maxAgeMs > 0))
    throw new InvalidArgumentError(`subscribe: maxAgeMs must be > 0, got ${o.maxAgeMs}`, {
      details: { option: 'maxAgeMs' },
    });
  const b = o.backoff;
  // A NaN delay would never run out: the retry would wait for ever, heartbeating.
  if (!(b.initialMs > 0 && b.maxMs >= b.initialMs && b.multiplier >= 1 && Number.isFinite(b.maxMs))) {
    throw new InvalidArgumentError(
      `subscribe: backoff needs 0 < initialMs ≤ maxMs (finite) and multiplier ≥ 1, got ${JSON.stringify(b)}`,
    );
  }
  return o;
}

const MAX_INT32 = 2 ** 31 - 1;

/** `dedupe`: a yes/no or `{ windowSize }` with a window of at least one id (the window would throw a RangeError). */
function checkDedupe(o: CompiledSubscribeOptions): void {
  const d: unknown = o.dedupe;
  if (d === undefined || typeof d === 'boolean') {
    checkWholeNumber('subscribe', 'dedupeWindowSize', o.dedupeWindowSize, 1, Number.MAX_SAFE_INTEGER);
    return;
  }
  if (d === null || typeof d !== 'object') {
    throw new InvalidArgumentError(
      `subscribe: dedupe must be true, false or { windowSize }, got ${String(d)}`,
      {
        details: { option: 'dedupe' },
      },
    );
  }
  const size = (d as { windowSize?: unknown }).windowSize;
  checkWholeNumber('subscribe', 'dedupe.windowSize', size as number, 1, Number.MAX_SAFE_INTEGER);
}
