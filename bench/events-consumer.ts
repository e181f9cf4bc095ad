/**
 * events.consumer_vs_kafkajs: events/s consumed through one DMTP subscription (one group, one consumer) next to
 * a plain kafkajs consumer (eachBatch) reading the same pre-produced events of the same topic in the same run.
 * Each side runs three times, alternating which goes first, each time in a fresh group from the beginning; the figure is the better
 * run of each (the machine is shared). Time runs from the first batch to the last event, so group-join time
 * is not counted on either side.
 */
import { Kafka, logLevel } from 'kafkajs';
import { deleteTopics, ensureTopics, EventProducer, subscribe, type Subscription } from '../events';
import { ratioFigure, round, type Figures } from './results';

const BROKERS = (process.env.KAFKA_BROKERS ?? '127.0.0.1:19092').split(',');
// 300,000: each run then measures ~2 s; with 100,000 (~0.7 s) the ratio swung 0.76–0.91 between runs.
const EVENTS = Number(process.env.BENCH_EVENTS ?? 300_000);
const PARTITIONS = 3;
const ROUNDS = 3;
const GROUP_TIMINGS = { sessionTimeout: 10_000, heartbeatInterval: 1_000, maxWaitTimeInMs: 100 };
/** How long one side may take to join and read every event (~2 s normally): past it, the part fails. */
const CONSUME_TIMEOUT_MS = Number(process.env.BENCH_EVENTS_TIMEOUT_MS ?? 120_000);

/**
 * Resolves with the ms from the first event to the last once `finish` is called; rejects if that has not
 * happened within CONSUME_TIMEOUT_MS (a lost event must fail the part, not hang the benchmark).
 */
function allConsumed(side: string, counted: () => number) {
  let finish!: (ms: number) => void;
  let timer: NodeJS.Timeout | undefined;
  const finished = new Promise<number>((resolve, reject) => {
    finish = (ms) => {
      clearTimeout(timer);
      resolve(ms);
    };
    timer = setTimeout(
      () =>
        reject(
          new Error(
            `${side}: ${counted()} of ${EVENTS} events consumed after ${CONSUME_TIMEOUT_MS / 1000} s (BENCH_EVENTS_TIMEOUT_MS)`,
          ),
        ),
      CONSUME_TIMEOUT_MS,
    );
  });
  // handled at once: the timeout may fire before the caller awaits (while still connecting)
  finished.catch(() => undefined);
  return { finish, finished, cancel: () => clearTimeout(timer) };
}

/** ~200-byte JSON values, as an order event would be. */
function value(i: number) {
  return {
    orderId: `order-${i}`,
    customer: `customer-${i % 997}`,
    total: (i * 37) % 10_000,
    items: ['sku-1', 'sku-2'],
    note: 'x'.repeat(80),
  };
}

async function produce(topic: string): Promise<void> {
  const producer = new EventProducer({ brokers: BROKERS, clientId: 'bench-events-producer' });
  try {
    const chunk = 5_000;
    for (let at = 0; at < EVENTS; at += chunk) {
      const reports = await Promise.all(
        Array.from({ length: Math.min(chunk, EVENTS - at) }, (_, j) =>
          producer.publish(topic, {
            key: `k${(at + j) % 1000}`,
            value: value(at + j),
            headers: { type: 'OrderPlaced' },
          }),
        ),
      );
      const bad = reports.find((r) => r.status !== 'sent');
      if (bad) throw new Error(`pre-producing failed: ${JSON.stringify(bad)}`);
    }
  } finally {
    await producer.stop();
  }
}

/** Events/s of a plain kafkajs consumer with eachBatch. */
async function plainKafkajs(topic: string, group: string): Promise<number> {
  const kafka = new Kafka({ clientId: 'bench-plain', brokers: BROKERS, logLevel: logLevel.NOTHING });
  const consumer = kafka.consumer({ groupId: group, ...GROUP_TIMINGS });
  let count = 0;
  let t0 = 0;
  const { finish: done, finished, cancel } = allConsumed('plain kafkajs consumer', () => count);
  try {
    await consumer.connect();
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    await consumer.run({
      eachBatch: async ({ batch }) => {
        if (t0 === 0) t0 = performance.now();
        for (let i = 0; i < batch.messages.length; i++) count++;
        if (count >= EVENTS) done(performance.now() - t0);
      },
    });
    const ms = await finished;
    return (EVENTS / ms) * 1000;
  } finally {
    cancel();
    await consumer.disconnect();
  }
}

/** Events/s through a DMTP subscription (filter-free, dedupe off: the default path). */
async function dmtp(topic: string, group: string): Promise<number> {
  let count = 0;
  let t0 = 0;
  const { finish: done, finished, cancel } = allConsumed('DMTP subscription', () => count);
  let sub: Subscription | undefined;
  try {
    sub = await subscribe({
      brokers: BROKERS,
      clientId: 'bench-dmtp',
      topics: [topic],
      group,
      fromBeginning: true,
      createDeadLetterTopics: false,
      sessionTimeoutMs: GROUP_TIMINGS.sessionTimeout,
      heartbeatIntervalMs: GROUP_TIMINGS.heartbeatInterval,
      maxWaitTimeMs: GROUP_TIMINGS.maxWaitTimeInMs,
      handler: () => {
        if (t0 === 0) t0 = performance.now();
        if (++count === EVENTS) done(performance.now() - t0);
      },
    });
    const ms = await finished;
    return (EVENTS / ms) * 1000;
  } finally {
    cancel();
    await sub?.stop();
  }
}

export async function run(): Promise<Figures> {
  const topic = `bench-events-consumer-${Date.now().toString(36)}`;
  await ensureTopics({ brokers: BROKERS }, [topic], { partitions: PARTITIONS });
  try {
    await produce(topic);
    const plain: number[] = [];
    const ours: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      // Alternate which side goes first, so neither always gets the warmer page cache and JIT.
      if (r % 2 === 0) plain.push(await plainKafkajs(topic, `${topic}-plain-${r}`));
      ours.push(await dmtp(topic, `${topic}-dmtp-${r}`));
      if (r % 2 === 1) plain.push(await plainKafkajs(topic, `${topic}-plain-${r}`));
    }
    const p = Math.max(...plain);
    const d = Math.max(...ours);
    const note = `${EVENTS} events of ~200 B, ${PARTITIONS} partitions, best of ${ROUNDS}`;
    return {
      'events.consumer_vs_kafkajs.ratio': ratioFigure(d, p, 'events/s', { goal: 'ratio >= 0.8', note }),
      'events.consumer.dmtp_events_per_s': { value: round(d), unit: 'events/s', note },
      'events.consumer.kafkajs_events_per_s': { value: round(p), unit: 'events/s', note },
    };
  } finally {
    await deleteTopics({ brokers: BROKERS }, [topic]).catch(() => undefined);
  }
}

if (require.main === module) {
  run().then(
    (f) => console.log(JSON.stringify(f, null, 2)),
    (err) => {
      console.error(err);
      process.exitCode = 1;
    },
  );
}
