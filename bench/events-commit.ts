/**
 * events.commit_to_consume.{p50,p99}_ms: how long after a transaction's commit is acknowledged to the
 * initiator its staged event reaches a consumer's handler.
 *
 * The real coordinator (coordinator/main.ts as a child process, etcd log, Kafka event sink) and two in-process
 * test participants; this process is the initiator (txapi SDK: two enlisted branches + one `tx.publish` per
 * transaction, 2PC) and the consumer (txapi `subscribe`, one group, dedupe on). Transactions start at a fixed
 * rate (open loop, EVENTS_COMMIT_TPS, default 200/s) for EVENTS_COMMIT_MS (default 10 s); the first second
 * is warm-up and not counted. Goal: p99 ≤ 100 ms.
 */
import { performance } from 'node:perf_hooks';
import { deleteTopics, ensureTopics } from '../events';
import { subscribe, type Subscription } from '../txapi';
import { EventsTxEnv } from '../test/support/events-tx-kit';
import { arrivalLatencies, percentile, round, type Figures } from './results';

const BROKERS = (process.env.KAFKA_BROKERS ?? '127.0.0.1:19092').split(',');
const TPS = Number(process.env.EVENTS_COMMIT_TPS ?? 200);
const DURATION_MS = Number(process.env.EVENTS_COMMIT_MS ?? 10_000);
const WARMUP_MS = 1_000;
/** How long after the last commit the consumer may take to see every event. */
const WAIT_MS = 15_000;

const benchContext = (title: string) => ({ test: { fullTitle: () => title } }) as unknown as Mocha.Context;

export async function run(): Promise<Figures> {
  const env = new EventsTxEnv(benchContext('bench events commit'), BROKERS);
  const topic = `${env.name}-orders`;
  let sub: Subscription | undefined;
  const ackedAt = new Map<string, number>();
  const consumedAt = new Map<string, number>();
  const publishedAt = new Map<string, number>();
  let failed = 0;
  try {
    await ensureTopics({ brokers: BROKERS }, [topic], { partitions: 3 });
    await env.start();
    sub = await subscribe({
      brokers: BROKERS,
      topics: [topic],
      group: `${env.name}-g`,
      fromBeginning: true,
      concurrency: 3,
      createDeadLetterTopics: false,
      sessionTimeoutMs: 10_000,
      heartbeatIntervalMs: 1_000,
      handler: (e) => {
        if (e.xid && !consumedAt.has(e.xid)) {
          consumedAt.set(e.xid, performance.now());
          publishedAt.set(e.xid, e.publishedAtMs - (Date.now() - performance.now()));
        }
      },
    });
    await sub.joined();

    const t0 = performance.now();
    const started: Promise<void>[] = [];
    let n = 0;
    await new Promise<void>((resolve) => {
      const tick = () => {
        const elapsed = performance.now() - t0;
        if (elapsed >= DURATION_MS) return resolve();
        // Catch up with the schedule: n transactions by now at TPS.
        while (n < Math.floor((elapsed / 1_000) * TPS)) {
          const i = n++;
          const warm = elapsed < WARMUP_MS;
          started.push(
            env.run('commit', [{ topic, key: `k${i % 64}`, value: { i, note: 'x'.repeat(100) } }]).then(
              (r) => {
                if (r.outcome !== 'committed') failed++;
                else if (!warm) ackedAt.set(r.xid, performance.now());
              },
              () => void failed++,
            ),
          );
        }
        setTimeout(tick, 2);
      };
      tick();
    });
    await Promise.all(started);
    const until = performance.now() + WAIT_MS;
    while ([...ackedAt.keys()].some((x) => !consumedAt.has(x)) && performance.now() < until) {
      await new Promise((r) => setTimeout(r, 50));
    }
    // An event not consumed within the wait counts as never arriving (+Infinity): with more than 1% of them
    // missing, p99 is Infinity and left out of the results, never the p99 of the ones that arrived.
    const lat = arrivalLatencies(ackedAt, consumedAt);
    const missing = lat.filter((x) => x === Infinity).length;
    if (process.env.EVENTS_COMMIT_DEBUG) {
      const parts = (f: (x: string, at: number) => number) =>
        [...ackedAt]
          .filter(([x]) => consumedAt.has(x))
          .map(([x, at]) => f(x, at))
          .sort((a, b) => a - b);
      const show = (l: number[]) => [50, 90, 99].map((p) => `p${p}=${round(percentile(l, p))}`).join(' ');
      console.error('ack->published', show(parts((x, at) => publishedAt.get(x)! - at)));
      console.error('published->consumed', show(parts((x) => consumedAt.get(x)! - publishedAt.get(x)!)));
      console.error(
        [50, 75, 90, 95, 98, 99, 99.9, 100].map((p) => `p${p}=${round(percentile(lat, p))}`).join(' '),
      );
    }
    const note =
      `${ackedAt.size} committed tx at ${TPS}/s (2 branches, 1 event each), ${failed} failed; ` +
      `${missing} events not consumed within ${WAIT_MS / 1000} s after the last commit, counted as never arriving (+Infinity)`;
    return {
      'events.commit_to_consume.p50_ms': { value: round(percentile(lat, 50)), unit: 'ms', note },
      'events.commit_to_consume.p99_ms': {
        value: round(percentile(lat, 99)),
        unit: 'ms',
        goal: '<= 100',
        note,
      },
    };
  } finally {
    await sub?.stop();
    await env.close();
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
