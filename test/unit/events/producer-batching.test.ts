/**
 * How the producer coalesces sends, against a FAKE kafkajs producer (pure logic, no broker): the fake refuses a
 * request whose record batch for a partition is over a broker's size limit, as Kafka does with
 * MESSAGE_TOO_LARGE, and a topic it is told to refuse; its metadata client answers UNKNOWN_TOPIC_OR_PARTITION for
 * the topics it is told are missing, and its brokers' `auto.create.topics.enable` as told. The real broker paths
 * are in test/integration/events.
 */
import { strict as assert } from 'node:assert';
import { createRequire } from 'node:module';
import type { Message } from 'kafkajs';
import { EventProducer, stageEvent, TOPICS_REMEMBERED } from '../../../events';

const require = createRequire(__filename);
const { createErrorFromCode } = require('kafkajs/src/protocol/error') as {
  createErrorFromCode: (code: number) => Error;
};
const MESSAGE_TOO_LARGE = 10;
const INVALID_TOPIC = 17;
const UNKNOWN_TOPIC_OR_PARTITION = 3;
const INVALID_RECORD = 87;
const CLUSTER_AUTHORIZATION_FAILED = 31;
const BROKER_MAX_BYTES = 1_048_588; // Kafka's default message.max.bytes

interface Request {
  topics: string[];
  bytes: number;
  refused?: string;
}

interface Fake {
  requests: Request[];
  /** Metadata look-ups, by topic. */
  lookups: string[];
}

/**
 * Topics the fake broker refuses, and with what: 'missing' (no such topic, and a request naming it does not create
 * it), 'absent' (no such topic until a request names it, which creates it), 'record' (INVALID_RECORD). The map is read at each request: a test deleting a 'missing' entry creates the
 * topic. `brokersCreate`: the brokers' `auto.create.topics.enable` as their configs tell it ('denied': no
 * DescribeConfigs access); it does not change what a request does.
 */
function fakeKafka(
  p: EventProducer,
  refuseTopic?: string,
  refuse: Record<string, 'missing' | 'absent' | 'record'> = {},
  /** Values whose first request of their own fails as a lost connection would (retriable), sending nothing. */
  flaky = new Set<string>(),
  brokersCreate: 'true' | 'false' | 'denied' = 'false',
): Fake {
  const requests: Request[] = [];
  const lookups: string[] = [];
  (p as unknown as { kafka: unknown }).kafka = {
    admin: () => ({
      connect: async () => undefined,
      disconnect: async () => undefined,
      fetchTopicMetadata: async ({ topics }: { topics: string[] }) => {
        lookups.push(...topics);
        if (topics.some((t) => refuse[t] === 'missing' || refuse[t] === 'absent'))
          throw createErrorFromCode(UNKNOWN_TOPIC_OR_PARTITION);
        return { topics: topics.map((name) => ({ name, partitions: [] })) };
      },
      describeCluster: async () => ({ brokers: [{ nodeId: 1, host: 'fake', port: 9092 }] }),
      describeConfigs: async () => {
        if (brokersCreate === 'denied') throw createErrorFromCode(CLUSTER_AUTHORIZATION_FAILED);
        const entry = { configName: 'auto.create.topics.enable', configValue: brokersCreate };
        return { resources: [{ errorCode: 0, configEntries: [entry] }] };
      },
    }),
    producer: () => ({
      connect: async () => undefined,
      disconnect: async () => undefined,
      sendBatch: async ({ topicMessages }: { topicMessages: { topic: string; messages: Message[] }[] }) => {
        await new Promise((r) => setTimeout(r, 5)); // in flight while more sends queue up
        const request: Request = { topics: topicMessages.map((t) => t.topic), bytes: 0 };
        requests.push(request);
        const alone = topicMessages.length === 1 && topicMessages[0].messages.length === 1;
        if (alone && flaky.delete(String(topicMessages[0].messages[0].value)))
          throw new Error('Connection error: read ECONNRESET');
        for (const { topic, messages } of topicMessages) {
          if (refuse[topic] === 'absent') delete refuse[topic]; // created by the request
          let bytes = 0; // one partition per topic here: all its messages in one record batch
          for (const m of messages) bytes += (m.value as Buffer).length + ((m.key as Buffer)?.length ?? 0);
          request.bytes += bytes;
          if (topic === refuseTopic) request.refused = 'invalid topic';
          else if (refuse[topic]) request.refused = refuse[topic];
          else if (bytes > BROKER_MAX_BYTES) request.refused = 'too large';
        }
        if (request.refused === 'invalid topic') throw createErrorFromCode(INVALID_TOPIC);
        if (request.refused === 'too large') throw createErrorFromCode(MESSAGE_TOO_LARGE);
        if (request.refused === 'missing') throw createErrorFromCode(UNKNOWN_TOPIC_OR_PARTITION);
        if (request.refused === 'record') throw createErrorFromCode(INVALID_RECORD);
        return topicMessages.map((t) => ({
          topicName: t.topic,
          partition: 0,
          errorCode: 0,
          baseOffset: '0',
        }));
      },
    }),
  };
  return { requests, lookups };
}

/** A committed transaction's events as the relay hands them over: 100 of ~4 KB (~400 KB, a legal transaction). */
const staged = (topic = 'orders') =>
  Array.from({ length: 100 }, (_, i) => stageEvent(topic, { key: 'k', value: 'x'.repeat(4_000) }, i));

describe('EventProducer coalescing (fake kafkajs producer)', () => {
  it('merges concurrent sends only up to maxBatchBytes, so no committed transaction loses its events', async () => {
    const p = new EventProducer({ brokers: ['fake:9092'] });
    const { requests } = fakeKafka(p);
    try {
      const reports = await Promise.all([1, 2, 3, 4, 5].map((n) => p.publishStaged(`xid-${n}`, staged())));
      const flat = reports.flat();
      assert.equal(flat.length, 500);
      assert.ok(
        flat.every((r) => r.status === 'sent'),
        JSON.stringify(flat.find((r) => r.status !== 'sent')),
      );
      assert.ok(
        requests.length >= 3,
        `${requests.length} requests: ~400 KB each, at most 900 KB per request`,
      );
      assert.deepEqual(
        requests.filter((r) => r.refused || r.bytes > 900_000),
        [],
        'no request over the cap, none refused by the broker',
      );
    } finally {
      await p.stop();
    }
  });

  it('a permanent refusal of a merged request fails only the group it belongs to', async () => {
    const p = new EventProducer({ brokers: ['fake:9092'] });
    fakeKafka(p, 'refused');
    try {
      const small = (topic: string) => [stageEvent(topic, { key: 'k', value: 'v' }, 0)];
      const [first, good, bad, alsoGood] = await Promise.all([
        p.publishStaged('xid-a', small('orders')), // goes alone while the others queue up
        p.publishStaged('xid-b', small('orders')),
        p.publishStaged('xid-c', small('refused')),
        p.publishStaged('xid-d', small('payments')),
      ]);
      assert.equal(first[0].status, 'sent');
      assert.equal(good[0].status, 'sent', 'not failed for the refused topic merged with it');
      assert.equal(alsoGood[0].status, 'sent');
      assert.equal(bad[0].status, 'failed');
      assert.equal(bad[0].status === 'failed' && bad[0].reason, 'invalid-topic');
    } finally {
      await p.stop();
    }
  });

  it("a topic the broker does not have fails only its own events: merged transactions and the same transaction's other topics go through", async () => {
    // Before, UNKNOWN_TOPIC_OR_PARTITION was a plain "Kafka unavailable": every transaction merged with the bad
    // one failed with it, and so did its own events to good topics, on every retry of the relay, for ever.
    // Brokers that do not say whether they create topics: the request is sent, and finds out.
    const p = new EventProducer({ brokers: ['fake:9092'] });
    const { requests } = fakeKafka(p, undefined, { typo: 'missing' }, undefined, 'denied');
    try {
      const mixed = ['orders', 'typo', 'orders', 'typo', 'payments'].map((t, i) =>
        stageEvent(t, { key: 'k', value: `v${i}` }, i),
      );
      const [, other, own] = await Promise.all([
        p.publishStaged('xid-a', [stageEvent('orders', { value: 'first' }, 0)]), // goes alone, the rest queue up
        p.publishStaged('xid-b', [stageEvent('orders', { value: 'b' }, 0)]),
        p.publishStaged('xid-c', mixed),
      ]);
      assert.equal(other[0].status, 'sent', 'not failed for the missing topic merged with it');
      assert.deepEqual(
        own.map((r) => (r.status === 'sent' ? 'sent' : `${r.reason}${r.retriable ? ' (retriable)' : ''}`)),
        ['sent', 'topic-unavailable (retriable)', 'sent', 'topic-unavailable (retriable)', 'sent'],
      );
      const asked = requests.filter((r) => r.topics.includes('typo')).length;
      assert.equal(
        asked,
        1,
        'asked once, in the merged request: the metadata then told which of its topics was missing',
      );
    } finally {
      await p.stop();
    }
  });

  it("an event the broker refuses for good fails alone, not its transaction's other events", async () => {
    const p = new EventProducer({ brokers: ['fake:9092'] });
    fakeKafka(p, undefined, { compacted: 'record' });
    try {
      const events = ['orders', 'compacted', 'orders'].map((t, i) => stageEvent(t, { value: `v${i}` }, i));
      const reports = await p.publishStaged('xid-r', events);
      assert.deepEqual(
        reports.map((r) =>
          r.status === 'sent' ? 'sent' : `${r.reason}${r.retriable ? ' (retriable)' : ''}`,
        ),
        ['sent', 'refused', 'sent'],
      );
    } finally {
      await p.stop();
    }
  });

  it('sent event by event, a later event never overtakes one that failed to be sent: its key keeps its order', async () => {
    // Before, after a retriable failure of one event the loop went on: the next event of the same key landed,
    // and the relay's retry of the set put the failed one after it.
    const p = new EventProducer({ brokers: ['fake:9092'] });
    // Brokers that do not say whether they create topics: the whole is sent, and refused for 'gone'.
    const { requests } = fakeKafka(p, undefined, { gone: 'missing' }, new Set(['"first"']), 'denied');
    try {
      const events = [
        stageEvent('gone', { key: 'k', value: 'x' }, 0), // no such topic: the set is sent apart
        stageEvent('orders', { key: 'k', value: 'first' }, 1),
        stageEvent('orders', { key: 'k', value: 'second' }, 2),
      ];
      const reports = await p.publishStaged('xid-o', events);
      assert.deepEqual(
        reports.map((r) =>
          r.status === 'sent' ? 'sent' : `${r.reason}${r.retriable ? ' (retriable)' : ''}`,
        ),
        ['topic-unavailable (retriable)', 'unavailable (retriable)', 'unavailable (retriable)'],
      );
      assert.equal(
        requests.length,
        2,
        'the whole, then "first" alone (the missing topic known from its metadata); "second" never sent',
      );
    } finally {
      await p.stop();
    }
  });
  it('a topic found missing is not asked again: its events are answered at once, until a check finds it', async () => {
    // Before, every request naming the topic waited out kafkajs' retries (~8 s on a real broker), every other
    // topic's events queued behind it. Its first request did too, until it was looked up before it.
    const refuse: Record<string, 'missing'> = { typo: 'missing' };
    const p = new EventProducer({ brokers: ['fake:9092'] });
    const { requests, lookups } = fakeKafka(p, undefined, refuse);
    const asked = () => requests.filter((r) => r.topics.includes('typo')).length;
    const outcome = (r: { status: string; reason?: string }) => (r.status === 'sent' ? 'sent' : r.reason);
    try {
      const [first] = await p.publishStaged('xid-1', [stageEvent('typo', { value: 'a' }, 0)]);
      assert.equal(outcome(first), 'topic-unavailable');
      assert.equal(asked(), 0, 'looked up before its first request, which then did not name it');
      const later = await Promise.all([
        p.publish('typo', { value: 'b' }),
        p.publish('orders', { value: 'c' }),
        p.publishStaged('xid-2', [
          stageEvent('orders', { value: 'd' }, 0),
          stageEvent('typo', { value: 'e' }, 1),
        ]),
      ]);
      assert.deepEqual(later.flat().map(outcome), ['topic-unavailable', 'sent', 'sent', 'topic-unavailable']);
      assert.equal(asked(), 0, 'no request named the missing topic');
      assert.deepEqual(
        lookups,
        ['typo', 'orders'],
        'one look-up told it was missing (the next check is not due yet), one that the other topic is there',
      );

      delete refuse.typo; // the topic is created
      const deadline = Date.now() + 5_000;
      let r = await p.publish('typo', { value: 'f' });
      while (r.status !== 'sent' && Date.now() < deadline) {
        await new Promise((res) => setTimeout(res, 100));
        r = await p.publish('typo', { value: 'f' });
      }
      assert.equal(outcome(r), 'sent', 'sent once the check found the topic');
      assert.deepEqual(lookups, ['typo', 'orders', 'typo'], 'and one check, 1 s after it was found missing');
      assert.equal(asked(), 1);
    } finally {
      await p.stop();
    }
  });

  it('a missing topic is checked less often while it stays missing', async () => {
    const p = new EventProducer({ brokers: ['fake:9092'] });
    const { lookups } = fakeKafka(p, undefined, { typo: 'missing' });
    try {
      await p.publish('typo', { value: 'a' });
      const until = Date.now() + 3_500;
      while (Date.now() < until) {
        const r = await p.publish('typo', { value: 'b' });
        assert.equal(r.status === 'failed' && r.reason, 'topic-unavailable');
        await new Promise((res) => setTimeout(res, 20));
      }
      // Found missing at 0: checked at ~1 s (missing: next in 2 s), at ~3 s (next in 4 s); ~170 publishes meanwhile.
      assert.deepEqual(lookups, ['typo', 'typo', 'typo']);
    } finally {
      await p.stop();
    }
  });

  it('a topic is taken for missing only when its metadata says so, not for a request that failed while it exists', async () => {
    // kafkajs fails every request of a producer that once sent to a topic since deleted, whatever topics the
    // request names, until the producer is replaced: the request's own topic is there all along.
    const p = new EventProducer({ brokers: ['fake:9092'] });
    const refuse: Record<string, 'missing'> = { orders: 'missing' };
    const { requests } = fakeKafka(p, undefined, refuse);
    // The broker refuses 'orders' while its metadata has it: the look-up says it exists.
    const kafka = (p as unknown as { kafka: { admin: () => object } }).kafka;
    const admin = kafka.admin;
    let looked = 0;
    kafka.admin = () => ({ ...admin(), fetchTopicMetadata: async () => (looked++, { topics: [] }) });
    try {
      const first = await p.publish('orders', { value: 'a' });
      assert.equal(first.status === 'failed' && first.reason, 'topic-unavailable');
      delete refuse.orders; // the next request (a new kafkajs producer) goes through
      const next = await p.publish('orders', { value: 'b' });
      assert.equal(next.status, 'sent', 'sent at once, not held as missing');
      assert.equal(requests.length, 2);
      assert.equal(looked, 2, 'its metadata was asked before its first request and after the failed one');
    } finally {
      await p.stop();
    }
  });

  it('a due check is made before the event that finds it due is answered: a topic created meanwhile takes that event', async () => {
    // Before, the check ran in the background while that event was answered missing: a relay retrying every 10 s
    // waited one more retry after the topic was found.
    const refuse: Record<string, 'missing'> = { typo: 'missing' };
    const p = new EventProducer({ brokers: ['fake:9092'] });
    const { lookups } = fakeKafka(p, undefined, refuse);
    try {
      assert.equal((await p.publish('typo', { value: 'a' })).status, 'failed');
      delete refuse.typo; // created; the check is due in 1 s
      await new Promise((res) => setTimeout(res, 1_100));
      const r = await p.publish('typo', { value: 'b' });
      assert.equal(r.status, 'sent', JSON.stringify(r));
      assert.deepEqual(lookups, ['typo', 'typo']);
    } finally {
      await p.stop();
    }
  });

  it('a check that cannot read the metadata leaves the topic missing, its next check further off', async () => {
    const refuse: Record<string, 'missing'> = { typo: 'missing' };
    const p = new EventProducer({ brokers: ['fake:9092'] });
    fakeKafka(p, undefined, refuse);
    const kafka = (p as unknown as { kafka: { admin: () => { fetchTopicMetadata: unknown } } }).kafka;
    const admin = kafka.admin;
    const clients: number[] = [];
    const started = Date.now();
    kafka.admin = () => {
      const a = admin();
      clients.push(Date.now() - started);
      // The first check's connection is lost.
      if (clients.length === 2)
        a.fetchTopicMetadata = async () => {
          throw new Error('Connection error: read ECONNRESET');
        };
      return a;
    };
    try {
      assert.equal((await p.publish('typo', { value: 'a' })).status, 'failed'); // looked up: missing
      delete refuse.typo;
      let r = await p.publish('typo', { value: 'b' });
      while (r.status !== 'sent' && Date.now() - started < 8_000) {
        await new Promise((res) => setTimeout(res, 50));
        r = await p.publish('typo', { value: 'b' });
      }
      assert.equal(r.status, 'sent', 'found by the check after the one that failed');
      assert.equal(clients.length, 3, `look-ups at ${clients.join(', ')} ms`);
      assert.ok(
        clients[1] >= 1_000 && clients[2] >= 3_000,
        `checks 1 s, then 2 s more after: ${clients.join(', ')} ms`,
      );
    } finally {
      await p.stop();
    }
  });

  it('a topic not sent to yet is looked up once before its first request: sent if the brokers will create it, else answered at once', async () => {
    // Before, its first request waited out kafkajs' retries (~8 s on a real broker) when the brokers would not
    // create it, every other topic's events queued behind it.
    const outcome = (r: { status: string; reason?: string }) => (r.status === 'sent' ? 'sent' : r.reason);
    for (const [brokersCreate, allowAutoTopicCreation, expected] of [
      ['true', undefined, 'sent'],
      ['true', false, 'topic-unavailable'],
      ['false', undefined, 'topic-unavailable'],
    ] as const) {
      const p = new EventProducer({ brokers: ['fake:9092'], allowAutoTopicCreation });
      const { requests, lookups } = fakeKafka(p, undefined, { fresh: 'absent' }, undefined, brokersCreate);
      const how = `brokers create: ${brokersCreate}, allowAutoTopicCreation: ${allowAutoTopicCreation}`;
      try {
        for (let i = 0; i < 3; i++) assert.equal(outcome(await p.publish('orders', { value: i })), 'sent');
        assert.equal(outcome(await p.publish('fresh', { value: 'a' })), expected, how);
        assert.deepEqual(
          lookups,
          ['orders', 'fresh'],
          `${how}: each looked up once, before its first request`,
        );
        assert.equal(
          requests.filter((r) => r.topics.includes('fresh')).length,
          expected === 'sent' ? 1 : 0,
          how,
        );
      } finally {
        await p.stop();
      }
    }
  });

  it('a look-up that fails holds nothing up: the request goes as it would have without it', async () => {
    const p = new EventProducer({ brokers: ['fake:9092'] });
    const { requests } = fakeKafka(p);
    const kafka = (p as unknown as { kafka: { admin: () => { fetchTopicMetadata: unknown } } }).kafka;
    const admin = kafka.admin;
    let asked = 0;
    kafka.admin = () => {
      const a = admin();
      a.fetchTopicMetadata = async () => {
        asked++;
        throw new Error('Connection error: read ECONNRESET');
      };
      return a;
    };
    try {
      const r = await p.publish('orders', { value: 'a' });
      assert.equal(r.status, 'sent', JSON.stringify(r));
      assert.equal(asked, 1);
      assert.equal(requests.length, 1);
      assert.equal((await p.publish('orders', { value: 'b' })).status, 'sent');
      assert.equal(asked, 1, 'sent to once: known, not looked up again');
    } finally {
      await p.stop();
    }
  });

  it('counts every report once in its stats: sent, failed by reason; and what waits, and the topics held missing', async () => {
    const p = new EventProducer({ brokers: ['fake:9092'], maxEventBytes: 1_000 });
    fakeKafka(p, undefined, { typo: 'missing', compacted: 'record' });
    try {
      await Promise.all([
        p.publish('orders', { value: 1 }),
        p.publish('orders', { value: 2 }),
        p.publish('typo', { value: 3 }),
        p.publish('bad topic', { value: 4 }),
        p.publish('orders', { value: 'x'.repeat(2_000) }),
        p.publishStaged('xid-s', [
          stageEvent('orders', { value: 5 }, 0),
          stageEvent('compacted', { value: 6 }, 1),
          stageEvent('typo', { value: 7 }, 2),
        ]),
      ]);
      const s = p.stats;
      assert.equal(s.sent, 3);
      assert.deepEqual(s.failed, {
        'invalid-topic': 1,
        'not-serialisable': 0,
        'too-large': 1,
        refused: 1,
        unavailable: 0,
        'topic-unavailable': 2,
      });
      assert.equal(s.queued, 0);
      assert.equal(s.missingTopics, 1);
    } finally {
      await p.stop();
    }
    assert.equal((await p.publish('orders', { value: 8 })).status, 'failed');
    assert.equal(p.stats.failed.unavailable, 1, 'refused once stopped: counted too');
  });

  it('with Kafka unreachable, looks nothing up: the reports say unavailable after one attempt to connect', async () => {
    const p = new EventProducer({ brokers: ['fake:9092'] });
    const { lookups } = fakeKafka(p);
    const kafka = (p as unknown as { kafka: { producer: () => object } }).kafka;
    let connects = 0;
    kafka.producer = () => ({
      connect: async () => {
        connects++;
        throw new Error('Connection error: connect ECONNREFUSED 127.0.0.1:9092');
      },
      disconnect: async () => undefined,
    });
    try {
      const r = await p.publish('orders', { value: 'a' });
      assert.equal(r.status === 'failed' && r.reason, 'unavailable', JSON.stringify(r));
      assert.equal(r.status === 'failed' && r.retriable, true);
      assert.equal(connects, 1, "one attempt (each waits out kafkajs' retries on a real client)");
      assert.deepEqual(lookups, [], 'no look-up, which would wait out retries of its own first');
    } finally {
      await p.stop();
    }
  });

  it(`remembers at most ${TOPICS_REMEMBERED} topics as present and as missing: past it the oldest is looked up again`, async () => {
    const level = process.env.DMTP_LOG_LEVEL;
    process.env.DMTP_LOG_LEVEL = 'silent'; // a warning per missing topic
    const many = (prefix: string) => Array.from({ length: TOPICS_REMEMBERED + 1 }, (_, i) => `${prefix}${i}`);
    const refuse: Record<string, 'missing'> = {};
    for (const t of many('gone-')) refuse[t] = 'missing';
    const p = new EventProducer({ brokers: ['fake:9092'] });
    const { lookups } = fakeKafka(p, undefined, refuse);
    const looked = (t: string) => lookups.filter((l) => l === t).length;
    try {
      for (const prefix of ['there-', 'gone-']) {
        const reports = await Promise.all(many(prefix).map((t) => p.publish(t, { value: 1 })));
        assert.ok(reports.every((r) => r.status === (prefix === 'there-' ? 'sent' : 'failed')));
        const first = `${prefix}0`;
        const last = `${prefix}${TOPICS_REMEMBERED}`;
        assert.deepEqual([looked(first), looked(last)], [1, 1]);
        await p.publish(first, { value: 2 });
        await p.publish(last, { value: 2 });
        assert.deepEqual(
          [looked(first), looked(last)],
          [2, 1],
          `${prefix}: the oldest forgotten, the newest not`,
        );
      }
    } finally {
      if (level === undefined) delete process.env.DMTP_LOG_LEVEL;
      else process.env.DMTP_LOG_LEVEL = level;
      await p.stop();
    }
  });
});
