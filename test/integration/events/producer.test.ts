import { strict as assert } from 'node:assert';
import { Kafka, logLevel } from 'kafkajs';
import { mintXid } from '../../../common';
import {
  CONTENT_TYPES,
  createKafka,
  deleteTopics,
  EventProducer,
  HEADERS,
  scoutTopics,
  stageEvent,
  type DeliverySent,
} from '../../../events';
import { KAFKA_BROKERS } from '../../support/env';
import { countRequestsNaming, EventsKit, waitFor } from '../../support/events-kit';

/** Sum of the end offsets of a topic: how many records it holds. */
async function recordCount(topic: string): Promise<number> {
  const admin = new Kafka({ brokers: KAFKA_BROKERS, logLevel: logLevel.NOTHING }).admin();
  await admin.connect();
  try {
    const offsets = await admin.fetchTopicOffsets(topic);
    return offsets.reduce((n, p) => n + Number(p.high), 0);
  } finally {
    await admin.disconnect();
  }
}

describe('events/producer (real Kafka)', function () {
  this.timeout(30_000);
  let kit: EventsKit;
  beforeEach(function () {
    kit = new EventsKit(this);
  });
  afterEach(() => kit.close());

  it('publishes a plain event and reports where it landed; a subscriber gets it with its id', async function () {
    const topic = await kit.topic(2);
    const producer = kit.producer();
    const report = await producer.publish(topic, {
      key: 'order-1',
      value: { total: 42 },
      headers: { type: 'OrderPlaced' },
    });
    assert.equal(report.status, 'sent', JSON.stringify(report));
    const sent = report as DeliverySent;
    assert.equal(sent.topic, topic);
    assert.ok(sent.partition === 0 || sent.partition === 1);
    assert.equal(sent.offset, '0');

    const got = await kit.collect(topic);
    await waitFor('the event', () => got.length === 1);
    const e = got[0];
    assert.equal(e.id, sent.id);
    assert.equal(e.partition, sent.partition);
    assert.equal(e.offset, sent.offset);
    assert.deepEqual(e.value, { total: 42 });
    assert.equal(e.keyText, 'order-1');
    assert.equal(e.header('type'), 'OrderPlaced');
    assert.equal(e.header(HEADERS.contentType), CONTENT_TYPES.json);
    assert.equal(e.xid, undefined, 'a plain event has no xid');
    assert.ok(Math.abs(e.publishedAtMs - Date.now()) < 30_000);
  });

  it('publishStaged carries the stable ids and the xid, and keeps key order', async function () {
    const topic = await kit.topic(3);
    const xid = mintXid('events-test');
    const staged = Array.from({ length: 30 }, (_, seq) =>
      stageEvent(topic, { key: `k${seq % 3}`, value: { seq } }, seq),
    );
    const reports = await kit.producer().publishStaged(xid, staged);
    assert.deepEqual(
      reports.map((r) => [r.status, r.id]),
      staged.map((s) => ['sent', `${xid}:${s.sequence}`]),
    );
    // Offsets grow with the sequence inside each partition: the batch went out in order.
    const lastOffset = new Map<number, number>();
    for (const r of reports as DeliverySent[]) {
      assert.ok(Number(r.offset) > (lastOffset.get(r.partition) ?? -1));
      lastOffset.set(r.partition, Number(r.offset));
    }

    const got = await kit.collect(topic);
    await waitFor('30 events', () => got.length === 30);
    const perKey = new Map<string, number[]>();
    for (const e of got) {
      assert.equal(e.xid, xid);
      assert.equal(e.id, `${xid}:${(e.value as { seq: number }).seq}`);
      perKey.set(e.keyText!, [...(perKey.get(e.keyText!) ?? []), (e.value as { seq: number }).seq]);
    }
    for (const [key, seqs] of perKey) {
      assert.deepEqual(
        seqs,
        [...seqs].sort((a, b) => a - b),
        `key ${key} in sequence order`,
      );
    }
  });

  it('publishStaged sends every retry of a keyless event to the same partition, chosen from its id', async function () {
    // Before, a keyless staged event went round-robin: each relay retry (same id) landed on another partition,
    // so at another group member, where no dedupe window knew the id.
    const topic = await kit.topic(4);
    const xid = mintXid('events-test');
    const staged = stageEvent(topic, { value: { order: 1 } }, 0);
    const partitions = new Set<number>();
    for (const producer of [kit.producer(), kit.producer()]) {
      for (let attempt = 0; attempt < 3; attempt++) {
        const [r] = await producer.publishStaged(xid, [staged]);
        assert.equal(r.status, 'sent', JSON.stringify(r));
        if (r.status === 'sent') partitions.add(r.partition);
      }
    }
    assert.equal(partitions.size, 1, `one partition for all six copies, got ${[...partitions].join(',')}`);
    const got = await kit.collect(topic);
    await waitFor('the six copies', () => got.length === 6);
    assert.ok(
      got.every((e) => e.key === null),
      'the id only chose the partition: the record still has no key',
    );
  });

  it('refuses oversized, non-serialisable and illegal-topic events with typed errors and sends nothing', async function () {
    const topic = await kit.topic(1);
    const producer = kit.producer({ maxEventBytes: 1_000 });
    const big = await producer.publish(topic, { value: 'x'.repeat(2_000) });
    const bigint = await producer.publish(topic, { value: { amount: 10n } });
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    const loop = await producer.publish(topic, { value: circular });
    const numericHeader = await producer.publish(topic, { value: 1, headers: { n: 1 as unknown as string } });
    const numericKey = await producer.publish(topic, { key: 7 as unknown as string, value: 1 });
    const noEvent = await producer.publish(topic, null as unknown as { value: unknown });
    const badTopic = await producer.publish('orders/eu', { value: 1 });
    const tooLong = await producer.publish('t'.repeat(250), { value: 1 });
    const expected = [
      [big, 'too-large', 'EventTooLargeError'],
      [bigint, 'not-serialisable', 'NotSerialisableError'],
      [loop, 'not-serialisable', 'NotSerialisableError'],
      [numericHeader, 'not-serialisable', 'NotSerialisableError'],
      [numericKey, 'not-serialisable', 'NotSerialisableError'],
      [noEvent, 'not-serialisable', 'NotSerialisableError'],
      [badTopic, 'invalid-topic', 'InvalidTopicError'],
      [tooLong, 'invalid-topic', 'InvalidTopicError'],
    ] as const;
    for (const [r, reason, name] of expected) {
      assert.equal(r.status, 'failed');
      if (r.status !== 'failed') continue;
      assert.equal(r.reason, reason);
      assert.equal(r.error.name, name);
      assert.equal(r.retriable, false);
    }
    // A staged batch with one bad event: that one fails alone, the others go out.
    const xid = mintXid('events-test');
    const reports = await producer.publishStaged(xid, [
      { topic, key: Buffer.from('k'), value: Buffer.from('1'), headers: {}, sequence: 0 },
      { topic, key: Buffer.from('k'), value: Buffer.alloc(5_000), headers: {}, sequence: 1 },
      { topic: 'no such/topic', key: Buffer.alloc(0), value: Buffer.from('3'), headers: {}, sequence: 2 },
    ]);
    assert.deepEqual(
      reports.map((r) => (r.status === 'sent' ? 'sent' : r.reason)),
      ['sent', 'too-large', 'invalid-topic'],
    );
    assert.equal(await recordCount(topic), 1, 'only the valid staged event reached Kafka');
  });

  it('keeps call order per partition (hence per key) with 300 publishes in flight at once', async function () {
    const topic = await kit.topic(2);
    const producer = kit.producer();
    await producer.start();
    const reports = await Promise.all(
      Array.from({ length: 300 }, (_, i) =>
        producer.publish(topic, { key: i % 2 ? 'odd' : 'even', value: i }),
      ),
    );
    // Offsets per partition, listed in call order: they must grow, one per event.
    const byPartition = new Map<number, number[]>();
    for (const r of reports) {
      assert.equal(r.status, 'sent');
      if (r.status === 'sent') {
        byPartition.set(r.partition, [...(byPartition.get(r.partition) ?? []), Number(r.offset)]);
      }
    }
    for (const [partition, offsets] of byPartition) {
      assert.deepEqual(
        offsets,
        [...offsets].sort((a, b) => a - b),
        `partition ${partition}: offsets in call order`,
      );
      assert.equal(new Set(offsets).size, offsets.length, 'one offset per event');
    }
    assert.equal(await recordCount(topic), 300);
  });

  it('reports Kafka unreachable as a retriable unavailable failure, without crashing', async function () {
    const producer = new EventProducer({
      brokers: ['127.0.0.1:1'],
      connectionTimeoutMs: 200,
      requestRetries: 1,
      initialRetryTimeMs: 50,
    });
    try {
      const r = await producer.publish('events-down', { value: { a: 1 } });
      assert.equal(r.status, 'failed');
      if (r.status === 'failed') {
        assert.equal(r.reason, 'unavailable');
        assert.equal(r.retriable, true);
        assert.equal(r.error.name, 'KafkaUnavailableError');
      }
      const staged = await producer.publishStaged(mintXid('events-test'), [
        { topic: 'events-down', key: Buffer.alloc(0), value: Buffer.from('x'), headers: {}, sequence: 0 },
      ]);
      assert.equal(staged[0].status === 'failed' && staged[0].reason, 'unavailable');
      await assert.rejects(producer.start(), { name: 'KafkaUnavailableError' });
    } finally {
      await producer.stop();
    }
  });

  it('with Kafka unreachable, answers the events queued behind a failed request at once, and queues at most maxQueuedEvents', async function () {
    // Before, each request of up to maxBatchEvents waited out kafkajs' retries in turn (3,000 events: the last
    // report after ~38 s), and a publisher that did not wait for its reports grew the queue without bound.
    const producer = new EventProducer({
      brokers: ['127.0.0.1:1'],
      connectionTimeoutMs: 200,
      requestRetries: 1,
      initialRetryTimeMs: 50,
      maxBatchEvents: 10,
      maxQueuedEvents: 40,
    });
    // Each request first connects, which waits out kafkajs' retries while Kafka is unreachable.
    const raw = producer as unknown as { connected: () => Promise<unknown> };
    const connected = raw.connected.bind(producer);
    let attempts = 0;
    raw.connected = () => (attempts++, connected());
    try {
      // The first goes out at once (a request of its own); 40 wait behind it; the last 9 find the queue full.
      const reports = await Promise.all(
        Array.from({ length: 50 }, (_, i) => producer.publish('events-down', { value: { i } })),
      );
      assert.ok(
        reports.every((r) => r.status === 'failed' && r.reason === 'unavailable' && r.retriable),
        'every report: unavailable, retriable',
      );
      const full = reports.filter((r) => r.status === 'failed' && /maxQueuedEvents 40/.test(r.error.message));
      assert.equal(full.length, 9, 'refused at once: the queue held 40');
      assert.equal(
        attempts,
        1,
        'one request waited out the retries; the 40 queued behind it were answered with it',
      );
      // Published after that: sent (Kafka may be back), not refused.
      const later = await producer.publish('events-down', { value: { i: 50 } });
      assert.equal(later.status === 'failed' && later.reason, 'unavailable');
      assert.equal(attempts, 2);
    } finally {
      await producer.stop();
    }
  });

  it('refuses producer options that cannot work, naming them', () => {
    for (const [k, v] of [
      ['maxQueuedEvents', 0],
      ['maxBatchEvents', NaN],
      ['ackTimeoutMs', -1],
      ['maxEventBytes', 1.5],
    ] as const) {
      assert.throws(
        () => new EventProducer({ brokers: KAFKA_BROKERS, [k]: v }),
        (e: Error) => e.name === 'InvalidArgumentError' && e.message.includes(`${k} must be a whole number`),
        k,
      );
    }
  });

  it('with auto-create off, a missing topic is found before its first request: its events fail at once until it exists, the others go on', async function () {
    this.timeout(60_000);
    const present = await kit.topic();
    const missing = `${present}-missing`;
    const producer = kit.producer({ allowAutoTopicCreation: false });
    const asked = countRequestsNaming(producer, missing);
    const outcome = (r: { status: string; reason?: string }) => (r.status === 'sent' ? 'sent' : r.reason);
    try {
      assert.equal(outcome(await producer.publish(present, { value: 0 })), 'sent');
      // Looked up before its first request (which waited out kafkajs' retries, ~8 s, before).
      const first = await producer.publish(missing, { value: 'a' });
      assert.equal(outcome(first), 'topic-unavailable', JSON.stringify(first));
      assert.equal(first.status === 'failed' && first.retriable, true);
      assert.match(first.status === 'failed' ? first.error.message : '', /UNKNOWN_TOPIC_OR_PARTITION/);
      assert.equal(asked.count(), 0, 'no request named it');

      const reports = await Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          i % 2 ? producer.publish(present, { value: i }) : producer.publish(missing, { value: i }),
        ),
      );
      assert.deepEqual(
        reports.map(outcome),
        reports.map((_, i) => (i % 2 ? 'sent' : 'topic-unavailable')),
      );
      assert.equal(asked.count(), 0, 'nor later');
      assert.equal(await recordCount(present), 21);

      const admin = new Kafka({ brokers: KAFKA_BROKERS, logLevel: logLevel.NOTHING }).admin();
      await admin.connect();
      try {
        assert.ok(!(await admin.listTopics()).includes(missing), 'the producer did not create the topic');
        await admin.createTopics({ topics: [{ topic: missing }], waitForLeaders: true });
        let r = await producer.publish(missing, { value: 'b' });
        for (let i = 0; r.status !== 'sent' && i < 150; i++) {
          await new Promise((res) => setTimeout(res, 100));
          r = await producer.publish(missing, { value: 'b' });
        }
        assert.equal(outcome(r), 'sent', 'sent once a check found the topic');
        assert.equal(r.status === 'sent' && r.offset, '0', 'nothing of it landed before');
      } finally {
        await admin.deleteTopics({ topics: [missing] }).catch(() => undefined);
        await admin.disconnect();
      }
      assert.throws(
        () => new EventProducer({ brokers: KAFKA_BROKERS, allowAutoTopicCreation: 'no' as never }),
        /allowAutoTopicCreation must be true or false, got no/,
      );
    } finally {
      asked.restore();
    }
  });

  it("with the brokers' auto-create on, a topic not there yet is looked up, then made by its first publish", async function () {
    const present = await kit.topic();
    const fresh = `${present}-fresh`;
    try {
      // What the producer asks before its first request naming a topic: the project's broker creates topics.
      const scouted = await scoutTopics(createKafka({ brokers: KAFKA_BROKERS }), [present, fresh], {
        autoCreate: true,
      });
      assert.deepEqual([...scouted.absent.keys()], [fresh]);
      assert.equal(scouted.absent.get(fresh)?.reason, 'topic-unavailable');
      assert.equal(scouted.brokersCreate, true, 'auto.create.topics.enable read from the broker');
      const producer = kit.producer();
      const r = await producer.publish(fresh, { value: 1 });
      assert.equal(r.status === 'sent' && r.offset, '0', JSON.stringify(r));
      assert.equal(await recordCount(fresh), 1);
    } finally {
      await deleteTopics({ brokers: KAFKA_BROKERS }, [fresh]);
    }
  });

  it('with auto-create off, a topic deleted after use fails one request for another topic, which is not taken for missing', async function () {
    // kafkajs asks the metadata of every topic a producer ever sent to: once one is deleted, a request for any
    // other topic that makes it read metadata fails. DMTP replaces the kafkajs producer after a failed request;
    // the other topic's metadata says it exists, so its next event is sent at once rather than held as missing.
    this.timeout(60_000);
    const gone = await kit.topic();
    const other = await kit.topic();
    const producer = kit.producer({ allowAutoTopicCreation: false });
    assert.equal((await producer.publish(gone, { value: 1 })).status, 'sent');
    await deleteTopics({ brokers: KAFKA_BROKERS }, [gone]);
    const first = await producer.publish(other, { value: 2 }); // kafkajs reads the metadata of both: ~8 s
    assert.equal(first.status === 'failed' && first.reason, 'topic-unavailable', JSON.stringify(first));
    const next = await producer.publish(other, { value: 3 });
    assert.equal(next.status, 'sent', JSON.stringify(next));
  });

  it('is not started again once stopped: start() rejects, and what is published after stop() stays retriable', async function () {
    // Before, start() after stop() opened a new Kafka connection that nothing closed.
    const topic = await kit.topic(1);
    const producer = new EventProducer({ brokers: KAFKA_BROKERS });
    await producer.start();
    assert.equal((await producer.publish(topic, { value: 1 })).status, 'sent');
    await producer.stop();
    await assert.rejects(producer.start(), (e: Error) => {
      assert.equal(e.name, 'KafkaUnavailableError');
      assert.match(e.message, /the producer is stopped/);
      return true;
    });
    const r = await producer.publish(topic, { value: 2 });
    assert.ok(r.status === 'failed' && r.reason === 'unavailable' && r.retriable, JSON.stringify(r));
    assert.equal(await recordCount(topic), 1);
  });
});
