// Transactional events end to end: the txapi SDK stages events with tx.publish, the real coordinator (child
// process, etcd log) decides, its outbox relay publishes to the shared Kafka, and a consumer subscribed with
// txapi's subscribe (dedupe on) checks that exactly the committed transactions' events arrive.
import { strict as assert } from 'node:assert';
import { ensureTopics, deleteTopics } from '../../../events';
import {
  createEvents,
  EventTooLargeError,
  InvalidTopicError,
  NotSerialisableError,
  TXAPI_SUBSCRIBE_DEFAULTS,
} from '../../../txapi';
import { KAFKA_BROKERS, nameFor } from '../../support/env';
import { EventsTxEnv, until, type Fate, type Outcome } from '../../support/events-tx-kit';

const CLIENT = { brokers: KAFKA_BROKERS };

describe('transactional events: published if and only if the transaction commits', function () {
  this.timeout(90_000);
  const topics: string[] = [];
  let env: EventsTxEnv | undefined;

  afterEach(async () => {
    await env?.close();
    env = undefined;
    if (topics.length) await deleteTopics(CLIENT, topics.splice(0)).catch(() => undefined);
  });

  async function topicFor(ctx: Mocha.Context, partitions: number): Promise<string> {
    const t = nameFor(ctx, 40);
    topics.push(t);
    await ensureTopics(CLIENT, [t], { partitions });
    return t;
  }

  it('500 transactions, a third aborted: exactly the committed ones’ events, once each, in key order', async function () {
    const topic = await topicFor(this, 3);
    env = await new EventsTxEnv(this, KAFKA_BROKERS).start();
    const got = await env.collect(topic);
    assert.equal(TXAPI_SUBSCRIBE_DEFAULTS.dedupe, true);

    const TOTAL = 500;
    const WORKERS = 10;
    const outcomes = new Map<string, { outcome: Outcome; fate: Fate; key: string; i: number }>();
    let next = 0;
    // Each worker owns one key and runs its transactions one after another, so per key the committed
    // transactions have an order the consumer must see (and within one, the staged order).
    const worker = async (w: number) => {
      const key = `k${w}`;
      let i = 0;
      while (next < TOTAL) {
        next++;
        const r = Math.random();
        const fate: Fate = r < 1 / 6 ? 'vote-abort' : r < 1 / 3 ? 'rollback' : 'commit';
        const events = [0, 1].map((seq) => ({ topic, key, value: { w, i, seq } }));
        const res = await env!.run(fate, events);
        outcomes.set(res.xid, { outcome: res.outcome, fate, key, i });
        i++;
      }
    };
    await Promise.all(Array.from({ length: WORKERS }, (_, w) => worker(w)));

    const all = [...outcomes.entries()];
    assert.equal(all.length, TOTAL);
    for (const [xid, o] of all) {
      assert.equal(o.outcome, o.fate === 'commit' ? 'committed' : 'aborted', `${xid} (${o.fate})`);
    }
    const committed = new Set(all.filter(([, o]) => o.outcome === 'committed').map(([x]) => x));
    assert.ok(committed.size > TOTAL / 2 && committed.size < TOTAL, `${committed.size} committed`);
    const expected = new Set([...committed].flatMap((x) => [`${x}:0`, `${x}:1`]));

    await until(
      () => `${got.length} of ${expected.size} events`,
      () => got.length >= expected.size,
      30_000,
    );
    await new Promise((r) => setTimeout(r, 300)); // room for anything that should not come

    const ids = got.map((e) => e.id);
    assert.equal(new Set(ids).size, ids.length, 'an event reached the handler twice despite dedupe');
    assert.deepEqual(new Set(ids), expected);
    for (const e of got) {
      assert.ok(e.xid && committed.has(e.xid), `event ${e.id} of a transaction that did not commit`);
    }
    const byKey = new Map<string, { i: number; seq: number }[]>();
    for (const e of got) {
      const v = e.value as { i: number; seq: number };
      byKey.set(e.key, [...(byKey.get(e.key) ?? []), v]);
    }
    for (const [key, list] of byKey) {
      for (let j = 1; j < list.length; j++) {
        const [a, b] = [list[j - 1], list[j]];
        assert.ok(a.i < b.i || (a.i === b.i && a.seq < b.seq), `key ${key} out of order at ${j}`);
      }
    }
  });

  it('coordinator exits after the decision, before the relay publishes: every committed event arrives after restart', async function () {
    const topic = await topicFor(this, 1);
    env = await new EventsTxEnv(this, KAFKA_BROKERS).start({
      failpoint: 'after-decision-before-relay:exit:8',
    });
    const got = await env.collect(topic);
    const results: { xid: string; outcome: Outcome }[] = [];
    let next = 0;
    const worker = async () => {
      while (next < 40) {
        const i = next++;
        const res = await env!.run('commit', [{ topic, key: `k${i % 4}`, value: { i } }]);
        results.push(res);
        // The coordinator is gone: wait until it is back and knows (presumed abort or recovered commit).
        if (res.outcome === 'unknown') await env!.outcomeOf(res.xid);
      }
    };
    await Promise.all(Array.from({ length: 4 }, worker));
    assert.equal(env.crashes, 1, 'the fail-point did not fire');

    const committed = new Set<string>();
    for (const r of results) {
      const final = r.outcome === 'unknown' ? await env.outcomeOf(r.xid) : r.outcome;
      if (final === 'committed') committed.add(r.xid);
    }
    assert.ok(committed.size >= 30, `${committed.size} committed`);
    const expected = new Set([...committed].map((x) => `${x}:0`));
    await until(
      () => `${got.length} of ${expected.size} events`,
      () => got.length >= expected.size,
      30_000,
    );
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(new Set(got.map((e) => e.id)), expected);
    assert.equal(got.length, expected.size);
  });

  it('bad input is a typed error from tx.publish and from publish, and the relay keeps going', async function () {
    const topic = await topicFor(this, 1);
    env = await new EventsTxEnv(this, KAFKA_BROKERS).start();
    const got = await env.collect(topic);
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    const huge = 'x'.repeat(1024 * 1024 + 1);

    let xid = '';
    await env.dmtp.transaction(async (tx) => {
      xid = tx.xid;
      const refuse = (f: () => void, type: new (...a: never[]) => Error, reason: string) =>
        assert.throws(f, (err: Error & { details?: { reason?: string }; xid?: string }) => {
          assert.ok(err instanceof type, `${err.name}: ${err.message}`);
          assert.equal(err.details?.reason, reason);
          assert.equal(err.xid, tx.xid);
          return true;
        });
      refuse(() => tx.publish(topic, { value: { amount: 10n } }), NotSerialisableError, 'not-serialisable');
      refuse(() => tx.publish(topic, { value: circular }), NotSerialisableError, 'not-serialisable');
      refuse(() => tx.publish(topic, { value: huge }), EventTooLargeError, 'too-large');
      refuse(() => tx.publish('orders/eu', { value: 1 }), InvalidTopicError, 'invalid-topic');
      refuse(() => tx.publish('', { value: 1 }), InvalidTopicError, 'invalid-topic');
      tx.publish(topic, { key: 'k', value: { ok: true }, headers: { type: 'Good' } });
    });

    const events = createEvents({ brokers: KAFKA_BROKERS });
    try {
      const reports = await Promise.all([
        events.publish(topic, { value: { amount: 10n } }),
        events.publish(topic, { value: huge }),
        events.publish('orders/eu', { value: 1 }),
      ]);
      assert.deepEqual(
        reports.map((r) => (r.status === 'failed' ? [r.reason, r.retriable] : r.status)),
        [
          ['not-serialisable', false],
          ['too-large', false],
          ['invalid-topic', false],
        ],
      );
      const plain = await events.publish(topic, { key: 'k', value: 'plain' });
      assert.equal(plain.status, 'sent');
    } finally {
      await events.stop();
    }

    await until(
      () => `${got.length} of 2 events`,
      () => got.length >= 2,
      20_000,
    );
    const tx = got.find((e) => e.xid === xid);
    assert.deepEqual(tx && [tx.id, tx.value], [`${xid}:0`, { ok: true }]);
    const plain = got.find((e) => e.xid === undefined);
    assert.equal(plain?.value, 'plain');
    assert.equal(got.length, 2);
  });

  it('a subscription stopped by itself leaves createEvents(); stop() stops the rest', async function () {
    // Before, a subscription stopped directly stayed in the client's set: subscribe/stop cycles piled up.
    const topic = await topicFor(this, 1);
    const events = createEvents({ brokers: KAFKA_BROKERS });
    try {
      const handler = async () => undefined;
      const a = await events.subscribe({ topics: [topic], group: `${topic}-a`, handler });
      const b = await events.subscribe({ topics: [topic], group: `${topic}-b`, handler });
      assert.equal(events.subscriptions, 2);
      await a.stop();
      assert.equal(events.subscriptions, 1);
      await events.stop();
      assert.equal(events.subscriptions, 0);
      assert.equal(b.stopSignal.aborted, true);
    } finally {
      await events.stop();
    }
  });

  it('createEvents({ allowAutoTopicCreation: false }) holds for its producer and its subscriptions', async function () {
    const topic = await topicFor(this, 1);
    const missing = `${topic}-typo`;
    const events = createEvents({ brokers: KAFKA_BROKERS, allowAutoTopicCreation: false });
    try {
      await assert.rejects(
        events.subscribe({ topics: [missing], group: `${topic}-g`, handler: async () => undefined }),
        /no topic .*-typo \(allowAutoTopicCreation is off\)/,
      );
      const r = await events.publish(missing, { value: 1 }); // looked up first: answered at once
      assert.equal(r.status === 'failed' && r.reason, 'topic-unavailable');
      assert.equal((await events.publish(topic, { value: 2 })).status, 'sent');
    } finally {
      await events.stop();
    }
  });
});
