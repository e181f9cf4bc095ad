/**
 * Prometheus metrics of a process's subscriptions, opt-in: `track(subscription)` exports what each event came to
 * (from the subscription's `stats`), handler retries, and the group's lag per topic, asked of Kafka when scraped.
 * `trackProducer(producer, name)` exports what a producer's publishes came to (sent, or failed by reason), the
 * events it holds waiting for Kafka and the topics it holds as missing (from its `stats`).
 *
 * One prom-client Registry per instance (never the global one); labels are the groups and topics the process
 * subscribes with and fixed outcome names, never an event id or key. Serve it with rpc's `serveMetrics(port,
 * { registry })`, or pass an `RpcMetrics`' registry to share its endpoint (events/ does not import rpc/).
 *
 * A scrape waits at most `lagTimeoutMs` for a group's lag: past it, or when Kafka fails, the gauge keeps the
 * last lag it read and `dmtp_events_consumer_lag_failures_total` counts the miss. At most one lag request per
 * subscription is under way; a scrape meanwhile waits for that one.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import { CounterTotals, InvalidArgumentError, MAX_TIMER_MS } from '../common';
import { checkWholeNumber } from '../common/options';
import type { Subscription } from './consumer';
import { DELIVERY_FAILURE_REASONS } from './errors';
import type { ProducerStats } from './producer';
import type { ConsumerLag } from './lag';
import type { SubscriptionStats } from './subscribe-options';

export interface EventMetricsOptions {
  /** Where the metrics go (default: a new Registry of their own). */
  registry?: Registry;
  /** Longest a scrape waits for one subscription's lag, in ms (default 5000). */
  lagTimeoutMs?: number;
}

export const EVENT_METRICS_DEFAULTS = { lagTimeoutMs: 5_000 };

/** What an event came to: each event counts in exactly one. */
const OUTCOMES: readonly (readonly [string, (s: SubscriptionStats) => number])[] = [
  ['handled', (s) => s.handled],
  ['filtered', (s) => s.filtered],
  ['duplicate', (s) => s.duplicates],
  ['dead_lettered', (s) => s.deadLettered],
  ['dead_letter_refused', (s) => s.deadLetterRefused],
];

/** The other counts a subscription keeps, by the name its counter series is kept under. */
const OTHER_COUNTS: readonly (readonly [string, (s: SubscriptionStats) => number])[] = [
  ['expired', (s) => s.expired],
  ['retried', (s) => s.retried],
];

/** What a producer's report came to, by the `outcome` label its counter series is kept under. */
const PUBLISHED: readonly (readonly [string, (s: ProducerStats) => number])[] = [
  ['sent', (s) => s.sent],
  ...DELIVERY_FAILURE_REASONS.map(
    (reason) => [reason.replace(/-/g, '_'), (s: ProducerStats) => s.failed[reason]] as const,
  ),
];

/** Anything with a producer's stats: an `EventProducer`, txapi's `createEvents()` client. */
export interface ProducerLike {
  readonly stats: ProducerStats;
}

/** A subscription's counts by the name its counter series is kept under; a producer's by outcome. */
const SUBSCRIPTION_COUNTS = new Map([...OUTCOMES, ...OTHER_COUNTS]);
const PUBLISHED_COUNTS = new Map(PUBLISHED);

interface Tracked {
  sub: Subscription;
  /** The lag last read per topic (kept when a later read fails). */
  lag: Map<string, number>;
  pending?: Promise<void>;
}

export class EventMetrics {
  readonly registry: Registry;
  private readonly lagTimeoutMs: number;
  private readonly tracked = new Set<Tracked>();
  /** The subscriptions' counts by group (every group ever tracked goes on being exported). */
  private readonly subscriptionTotals = new CounterTotals<Subscription>(
    [...SUBSCRIPTION_COUNTS.keys()],
    (sub, name) => SUBSCRIPTION_COUNTS.get(name)!(sub.stats),
  );
  /** The producers' counts by name. */
  private readonly producerTotals = new CounterTotals<ProducerLike>(
    [...PUBLISHED_COUNTS.keys()],
    (producer, outcome) => PUBLISHED_COUNTS.get(outcome)!(producer.stats),
  );
  /** Set once the subscriptions' metric families are registered. */
  private lagFailures?: Counter<'group'>;
  private producerFamilies = false;
  private round: Promise<void> | undefined;

  constructor(options: EventMetricsOptions = {}) {
    this.registry = options.registry ?? new Registry();
    this.lagTimeoutMs = options.lagTimeoutMs ?? EVENT_METRICS_DEFAULTS.lagTimeoutMs;
    checkWholeNumber('EventMetrics', 'lagTimeoutMs', this.lagTimeoutMs, 1, MAX_TIMER_MS);
  }

  /** Registers the subscriptions' metric families, at the first `track` (a producer-only process shows none). */
  private subscriptionMetrics(): void {
    if (this.lagFailures) return;
    const registers = [this.registry];
    const totals = this.subscriptionTotals;
    new Counter({
      name: 'dmtp_events_consumed_total',
      help: 'Events a subscription finished, by group and outcome: handled, filtered, duplicate (dropped by dedupe), dead_lettered, dead_letter_refused (skipped).',
      labelNames: ['group', 'outcome'],
      registers,
      collect() {
        for (const group of totals.labels)
          for (const [outcome] of OUTCOMES) this.inc({ group, outcome }, totals.increment(group, outcome));
      },
    });
    new Counter({
      name: 'dmtp_events_expired_total',
      help: 'Events older than maxAgeMs, sent to the dead-letter topic without reaching the handler, by group.',
      labelNames: ['group'],
      registers,
      collect() {
        for (const group of totals.labels) this.inc({ group }, totals.increment(group, OTHER_COUNTS[0][0]));
      },
    });
    new Counter({
      name: 'dmtp_events_handler_retries_total',
      help: 'Failed handler attempts that were retried, by group.',
      labelNames: ['group'],
      registers,
      collect() {
        for (const group of totals.labels) this.inc({ group }, totals.increment(group, OTHER_COUNTS[1][0]));
      },
    });
    const tracked = this.tracked;
    const refreshAll = () => this.refreshAll();
    this.lagFailures = new Counter({
      name: 'dmtp_events_consumer_lag_failures_total',
      help: 'Scrapes that could not read a group’s lag in time (Kafka slow or down); its gauge kept the last value.',
      labelNames: ['group'],
      registers,
      // The scrape's lag reads count their misses here: wait for them, as the gauge does.
      async collect() {
        await refreshAll();
      },
    });
    new Gauge({
      name: 'dmtp_events_consumer_lag',
      help: 'Events of a topic its group has not committed (end of log minus committed offset, summed over partitions).',
      labelNames: ['group', 'topic'],
      registers,
      async collect() {
        await refreshAll();
        this.reset();
        const sum = new Map<string, { group: string; topic: string; lag: number }>();
        for (const t of tracked) {
          for (const [topic, lag] of t.lag) {
            const key = `${t.sub.group}\u0000${topic}`;
            // Two subscriptions of one group in this process read the same committed offsets: count once.
            sum.set(key, { group: t.sub.group, topic, lag });
          }
        }
        for (const s of sum.values()) this.set({ group: s.group, topic: s.topic }, s.lag);
      },
    });
  }

  /** Registers the producers' metric families, at the first `trackProducer`. */
  private producerMetrics(): void {
    if (this.producerFamilies) return;
    this.producerFamilies = true;
    const registers = [this.registry];
    const totals = this.producerTotals;
    new Counter({
      name: 'dmtp_events_published_total',
      help: 'Events a producer was asked to publish, by producer and outcome: sent, or the failure reason (invalid_topic, not_serialisable, too_large, refused, unavailable, topic_unavailable); a retried event counts each time.',
      labelNames: ['producer', 'outcome'],
      registers,
      collect() {
        for (const producer of totals.labels)
          for (const [outcome] of PUBLISHED)
            this.inc({ producer, outcome }, totals.increment(producer, outcome));
      },
    });
    const gauge = (name: string, help: string, pick: (s: ProducerStats) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['producer'],
        registers,
        collect() {
          this.reset();
          const sum = new Map<string, number>();
          for (const [p, name] of totals.entries()) sum.set(name, (sum.get(name) ?? 0) + pick(p.stats));
          for (const [producer, n] of sum) this.set({ producer }, n);
        },
      });
    gauge(
      'dmtp_events_producer_queued',
      'Events waiting for Kafka in a producer (queued, not yet in a request).',
      (s) => s.queued,
    );
    gauge(
      'dmtp_events_producer_missing_topics',
      'Topics a producer holds as missing (not there, or refused): their events fail topic_unavailable at once.',
      (s) => s.missingTopics,
    );
  }

  /**
   * Exports the subscription's counts and its group's lag until the returned function is called (its counts stay
   * in the totals; its lag series goes). Track each subscription once.
   */
  track(sub: Subscription): () => void {
    if (this.subscriptionTotals.labelOf(sub) !== undefined)
      throw new InvalidArgumentError(
        `EventMetrics.track: this subscription (group '${sub.group}') is tracked already`,
      );
    const t: Tracked = { sub, lag: new Map() };
    this.subscriptionMetrics();
    const untrack = this.subscriptionTotals.track(sub, sub.group);
    this.lagFailures!.inc({ group: sub.group }, 0);
    this.tracked.add(t);
    return () => {
      if (!this.tracked.delete(t)) return;
      untrack();
    };
  }

  /**
   * Exports a producer's counts (under `name`: producers tracked under one name add up) until the returned function
   * is called (its counts stay in the totals; its gauges go).
   */
  trackProducer(producer: ProducerLike, name: string): () => void {
    if (typeof name !== 'string' || name === '')
      throw new InvalidArgumentError('EventMetrics.trackProducer: name must be a non-empty string');
    const already = this.producerTotals.labelOf(producer);
    if (already !== undefined)
      throw new InvalidArgumentError(
        `EventMetrics.trackProducer: this producer is tracked already (as '${already}')`,
      );
    this.producerMetrics();
    return this.producerTotals.track(producer, name);
  }

  /** The Prometheus text exposition (what `/metrics` answers). */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** One round of lag reads per scrape, shared by the metrics that need it. */
  private refreshAll(): Promise<void> {
    this.round ??= Promise.all([...this.tracked].map((t) => this.refreshLag(t))).then(
      () => (this.round = undefined),
    );
    return this.round;
  }

  /** Reads the subscription's lag into `t.lag`, waiting at most lagTimeoutMs; a miss is counted, not thrown. */
  private refreshLag(t: Tracked): Promise<void> {
    t.pending ??= t.sub
      .lag()
      .then((lag: ConsumerLag) => {
        for (const topic of lag.topics) t.lag.set(topic.topic, topic.lag);
      })
      .finally(() => (t.pending = undefined));
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('lag not read in time')), this.lagTimeoutMs);
    });
    return Promise.race([t.pending, late])
      .catch(() => this.lagFailures!.inc({ group: t.sub.group }))
      .finally(() => clearTimeout(timer));
  }
}
