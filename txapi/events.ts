/**
 * The application-facing events API, over events/ (the Kafka plumbing the coordinator's relay shares).
 *
 * - Inside a transaction: `tx.publish(topic, { key, value, headers })` stages the event; the coordinator
 *   publishes it if and only if the transaction commits (see tx.ts). Nothing here is needed for that.
 * - Outside a transaction: `events.publish(topic, event)` goes straight to Kafka and answers a delivery report
 *   (`sent` with partition/offset, or `failed` with `reason` and the typed error); it never rejects. It is
 *   immediate even when called inside a transaction block: use `tx.publish` for an event that must follow the
 *   transaction's outcome.
 * - `events.subscribe({...})` / `subscribe({...})`: events/ subscriptions (groups, filters, retries,
 *   dead-letter, maxAgeMs, concurrency) with DMTP's application defaults, TXAPI_SUBSCRIBE_DEFAULTS:
 *   **dedupe on** — a committed transaction's events are delivered at least once (a relay retry after a send
 *   whose acknowledgement was lost, a coordinator restart between publish and forgetting the record), always
 *   with the same id `<xid>:<sequence>`, so dropping repeated ids turns that into exactly once for a window
 *   of the last 10,000 ids per subscription (not across restarts or group members: a handler that must never
 *   see a duplicate still needs an idempotent write keyed on `event.id`). Plain events have random ids, so
 *   dedupe costs them nothing. Pass `dedupe: false` to turn it off.
 *
 * Imports events/ and common/ only (never coordinator/).
 */
import {
  clientOptions,
  DEDUPE_DEFAULTS,
  EventProducer,
  subscribe as subscribeEvents,
  type DeliveryReport,
  type EventInput,
  type ProducerOptions,
  type ProducerStats,
  type SubscribeOptions,
  type Subscription,
} from '../events';

export const TXAPI_SUBSCRIBE_DEFAULTS = {
  /** Drop redeliveries by event id (window: DEDUPE_DEFAULTS.windowSize ids per subscription). */
  dedupe: true,
  dedupeWindowSize: DEDUPE_DEFAULTS.windowSize,
} as const;

/** Subscription options as applications pass them: `dedupe` defaults to true. */
export type DmtpSubscribeOptions = SubscribeOptions;

/** events/ `subscribe` with DMTP's application defaults (dedupe on). */
export function subscribe(options: DmtpSubscribeOptions): Promise<Subscription> {
  return subscribeEvents({
    ...options,
    dedupe: options.dedupe ?? TXAPI_SUBSCRIBE_DEFAULTS.dedupe,
  });
}

/**
 * `tracing` (OpenTelemetry spans, default off) and `allowAutoTopicCreation` apply to the producer and to every
 * subscription of the client.
 */
export interface DmtpEventsOptions extends ProducerOptions {
  /** Defaults merged into every `subscribe` of this client (brokers and client timings are added). */
  subscribeDefaults?: Partial<Omit<SubscribeOptions, 'topics' | 'group' | 'handler'>>;
}

/**
 * One application's events client: a lazily connected producer for plain publishes and subscriptions that
 * share its brokers. `stop()` stops every subscription it started, then the producer.
 */
export class DmtpEvents {
  private readonly producer: EventProducer;
  private readonly subs = new Set<Subscription>();

  constructor(private readonly options: DmtpEventsOptions) {
    const { subscribeDefaults: _ignored, ...producer } = options;
    this.producer = new EventProducer({ clientId: 'dmtp-app', ...producer });
  }

  /** What this client's publishes came to, and what waits (`EventMetrics.trackProducer(events, name)`). */
  get stats(): ProducerStats {
    return this.producer.stats;
  }

  /** Connects the producer now (optional: the first publish does). Rejects with KafkaUnavailableError. */
  start(): Promise<void> {
    return this.producer.start();
  }

  /** Publishes a plain event now (not part of any transaction); never rejects. */
  publish(topic: string, event: EventInput): Promise<DeliveryReport> {
    return this.producer.publish(topic, event);
  }

  /** Subscribes with this client's brokers and defaults (dedupe on unless said otherwise). */
  async subscribe(
    options: Omit<SubscribeOptions, 'brokers'> & { brokers?: string[] },
  ): Promise<Subscription> {
    // The producer's connection settings (brokers, timings, TLS, SASL), all but its client id.
    const { clientId: _producerId, ...connection } = clientOptions(this.options);
    const sub = await subscribe({
      ...connection,
      tracing: this.options.tracing,
      allowAutoTopicCreation: this.options.allowAutoTopicCreation,
      ...this.options.subscribeDefaults,
      ...options,
    });
    this.subs.add(sub);
    // A subscription stopped by itself leaves the set (subscribe/stop cycles would otherwise pile up here).
    sub.stopSignal.addEventListener('abort', () => this.subs.delete(sub), { once: true });
    return sub;
  }

  /** Subscriptions started here and not stopped. */
  get subscriptions(): number {
    return this.subs.size;
  }

  /**
   * Stops every subscription started here (in-flight handlers finish, offsets committed; a subscription's
   * `stop()` is idempotent, so one stopped before is fine), then the producer.
   */
  async stop(): Promise<void> {
    await Promise.all([...this.subs].map((s) => s.stop()));
    this.subs.clear();
    await this.producer.stop();
  }
}

export function createEvents(options: DmtpEventsOptions): DmtpEvents {
  return new DmtpEvents(options);
}
