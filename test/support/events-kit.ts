/**
 * What the events integration tests share: fast consumer-group timings, topics named from the test and deleted
 * afterwards (with their dead-letter topics), and one `close()` that stops every producer and subscription a
 * test started.
 */
import {
  deleteTopics,
  ensureTopics,
  EventProducer,
  subscribe,
  type ProducerOptions,
  type ReceivedEvent,
  type SubscribeOptions,
  type Subscription,
} from '../../events';
import type { Kafka } from 'kafkajs';
import { KAFKA_BROKERS, nameFor } from './env';

export const CLIENT = { brokers: KAFKA_BROKERS };

/** Small group timings so joins and rebalances take about a second, not the production half-minute. */
export const FAST_GROUP = {
  sessionTimeoutMs: 6_000,
  heartbeatIntervalMs: 500,
  rebalanceTimeoutMs: 6_000,
  maxWaitTimeMs: 100,
  backoff: { initialMs: 20, maxMs: 100, multiplier: 2 },
} as const;

export class EventsKit {
  private readonly topics: string[] = [];
  private readonly producers: EventProducer[] = [];
  private readonly subscriptions: Subscription[] = [];
  private n = 0;

  constructor(private readonly ctx: Mocha.Context) {}

  /** A fresh topic named from the test, created with `partitions`. */
  async topic(partitions = 1): Promise<string> {
    const t = `${nameFor(this.ctx, 40)}-${this.n++}`;
    this.topics.push(t, `${t}.dlq`);
    await ensureTopics(CLIENT, [t], { partitions });
    return t;
  }

  /** A group name from the test. */
  group(): string {
    return `${nameFor(this.ctx, 40)}-g${this.n++}`;
  }

  producer(options: Partial<ProducerOptions> = {}): EventProducer {
    const p = new EventProducer({ ...CLIENT, ...options });
    this.producers.push(p);
    return p;
  }

  async subscribe(
    options: Omit<SubscribeOptions, 'brokers'> & { brokers?: string[] },
  ): Promise<Subscription> {
    const s = await subscribe({ ...CLIENT, ...FAST_GROUP, fromBeginning: true, ...options });
    this.subscriptions.push(s);
    return s;
  }

  /** Subscribes and collects every event of `topic` (e.g. a dead-letter topic) into the returned array. */
  async collect(topic: string): Promise<ReceivedEvent[]> {
    const seen: ReceivedEvent[] = [];
    const s = await this.subscribe({
      topics: [topic],
      group: this.group(),
      createDeadLetterTopics: false, // a collector never fails, and reading a .dlq must not create a .dlq.dlq
      handler: (e) => void seen.push(e),
    });
    await s.joined();
    return seen;
  }

  async close(): Promise<void> {
    await Promise.all(this.subscriptions.splice(0).map((s) => s.stop()));
    await Promise.all(this.producers.splice(0).map((p) => p.stop()));
    if (this.topics.length > 0) await deleteTopics(CLIENT, this.topics.splice(0)).catch(() => undefined);
  }
}

/** Polls `check` until it holds or `timeoutMs` passes (then throws with `what`). */
export async function waitFor(what: string, check: () => boolean, timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Counts the requests an EventProducer sends naming `topic`, whichever of its kafkajs producers (a new one per
 * producer id, after a failed send) sends them. `restore()` puts the producer's factory back.
 */
export function countRequestsNaming(
  producer: EventProducer,
  topic: string,
): { count: () => number; restore: () => void } {
  const kafka = (producer as unknown as { kafka: Kafka }).kafka;
  const make = kafka.producer.bind(kafka);
  let n = 0;
  kafka.producer = (options) => {
    const p = make(options);
    const sendBatch = p.sendBatch.bind(p);
    p.sendBatch = (batch) => {
      if (batch.topicMessages?.some((t) => t.topic === topic)) n++;
      return sendBatch(batch);
    };
    return p;
  };
  return { count: () => n, restore: () => (kafka.producer = make) };
}
