import { strict as assert } from 'node:assert';
import { CompressionTypes, Kafka, logLevel, type Message } from 'kafkajs';
import {
  DEAD_LETTER_HEADERS,
  HEADERS,
  REDRIVE_HEADERS,
  defaultProgressGroup,
  redrive,
  type ReceivedEvent,
  type RedriveCopy,
} from '../../../events';
import { FailedPreconditionError, NotFoundError } from '../../../common';
import { KAFKA_BROKERS } from '../../support/env';
import { CLIENT, EventsKit, sleep, waitFor } from '../../support/events-kit';

describe('events/redrive (real Kafka)', function () {
  this.timeout(60_000);
  let kit: EventsKit;
  beforeEach(function () {
    kit = new EventsKit(this);
  });
  afterEach(() => kit.close());

  it('sends a failed event back to the group that gave up on it only, once, with its id; a second run sends nothing', async function () {
    const topic = await kit.topic(2);
    const dlq = `${topic}.dlq`;
    let broken = true;
    const failing: ReceivedEvent[] = [];
    const other: ReceivedEvent[] = [];
    const failingSub = await kit.subscribe({
      topics: [topic],
      group: kit.group(),
      retries: 0,
      handler: (e) => {
        if (broken && e.keyText === 'bad') throw new Error('downstream is down');
        failing.push(e);
      },
    });
    const otherSub = await kit.subscribe({
      topics: [topic],
      group: kit.group(),
      handler: (e) => void other.push(e),
    });
    await Promise.all([failingSub.joined(), otherSub.joined()]);
    const producer = kit.producer();
    const bad = await producer.publish(topic, { key: 'bad', value: { n: 1 }, headers: { type: 'Pay' } });
    await producer.publish(topic, { key: 'good', value: { n: 2 } });
    assert.ok(bad.status === 'sent');
    await waitFor(
      'one dead-lettered, the rest handled',
      () => failingSub.stats.deadLettered === 1 && failing.length === 1 && other.length === 2,
    );

    broken = false;
    const copies: RedriveCopy[] = [];
    const dry = await redrive({
      ...CLIENT,
      deadLetterTopic: dlq,
      dryRun: true,
      onCopy: (c) => copies.push(c),
    });
    assert.deepEqual([dry.redriven, dry.skipped.length, dry.complete], [1, 0, true]);
    assert.equal(copies[0].id, bad.id);
    assert.deepEqual(copies[0].to, { topic, partition: bad.partition });
    await sleep(1_000);
    assert.equal(failing.length, 1, 'a dry run sends nothing');

    const run = await redrive({ ...CLIENT, deadLetterTopic: dlq });
    assert.deepEqual([run.redriven, run.skipped.length, run.complete], [1, 0, true]);
    await waitFor('the redriven event handled by the group that failed it', () => failing.length === 2);
    const back = failing[1];
    assert.equal(back.id, bad.id, 'same event id');
    assert.deepEqual(back.value, { n: 1 });
    assert.equal(back.header('type'), 'Pay');
    assert.equal(back.partition, bad.partition, 'back to its own partition');
    assert.equal(back.header(REDRIVE_HEADERS.group), failingSub.group);
    assert.match(back.header(REDRIVE_HEADERS.from) ?? '', new RegExp(`^${dlq}/\\d+/0$`));
    assert.equal(back.header(DEAD_LETTER_HEADERS.reason), undefined, 'no dead-letter headers');
    await waitFor('the other group to pass over it', () => otherSub.stats.filtered === 1);
    assert.equal(other.length, 2, 'the group that handled it before does not get it again');

    const again = await redrive({ ...CLIENT, deadLetterTopic: dlq });
    assert.deepEqual(
      [again.redriven, again.skipped.length, again.complete],
      [0, 0, true],
      'progress was kept',
    );
    await sleep(500);
    assert.equal(failing.length, 2);
  });

  it('an expired event goes back with a fresh published-at, so maxAgeMs lets it through', async function () {
    const topic = await kit.topic(1);
    const raw = new Kafka({ brokers: KAFKA_BROKERS, logLevel: logLevel.NOTHING }).producer();
    await raw.connect();
    try {
      await raw.send({
        topic,
        messages: [
          {
            value: '"late"',
            headers: {
              [HEADERS.publishedAtMs]: String(Date.now() - 60_000),
              [HEADERS.contentType]: 'application/json',
            },
          },
        ],
      });
    } finally {
      await raw.disconnect();
    }
    const handled: ReceivedEvent[] = [];
    const sub = await kit.subscribe({
      topics: [topic],
      group: kit.group(),
      maxAgeMs: 30_000,
      handler: (e) => void handled.push(e),
    });
    await waitFor('the stale event expired', () => sub.stats.expired === 1);
    const result = await redrive({ ...CLIENT, deadLetterTopic: `${topic}.dlq` });
    assert.equal(result.redriven, 1);
    await waitFor('the redriven copy handled', () => handled.length === 1);
    assert.equal(handled[0].value, 'late');
    assert.ok(Date.now() - handled[0].publishedAtMs < 30_000, 'a fresh published-at');
    assert.equal(sub.stats.expired, 1);
  });

  it('skips a copy that lost its value (too large) and names where the original is; --max stops early', async function () {
    const dlqOnly = await kit.topic(1); // a topic written by hand as a dead-letter topic
    const billing = kit.group();
    const raw = new Kafka({ brokers: KAFKA_BROKERS, logLevel: logLevel.NOTHING }).producer();
    await raw.connect();
    const copy = (offset: string, extra: Record<string, string> = {}) => ({
      value: extra[DEAD_LETTER_HEADERS.valueOmitted] ? null : '"v"',
      headers: {
        [DEAD_LETTER_HEADERS.topic]: 'orders',
        [DEAD_LETTER_HEADERS.partition]: '0',
        [DEAD_LETTER_HEADERS.offset]: offset,
        [DEAD_LETTER_HEADERS.group]: billing,
        ...extra,
      },
    });
    try {
      await raw.send({
        topic: dlqOnly,
        messages: [copy('41', { [DEAD_LETTER_HEADERS.valueOmitted]: '2000000' }), copy('42'), { value: 'x' }],
      });
    } finally {
      await raw.disconnect();
    }
    const target = await kit.topic(1);
    const first = await redrive({ ...CLIENT, deadLetterTopic: dlqOnly, to: target, max: 2 });
    assert.equal(first.complete, false);
    assert.equal(first.redriven, 1);
    assert.equal(first.skipped.length, 1);
    assert.match(
      first.skipped[0].skipped!,
      /no value \(2000000 bytes left out.*original is at orders\/0\/41/,
    );
    const rest = await redrive({ ...CLIENT, deadLetterTopic: dlqOnly, to: target });
    assert.equal(rest.complete, true);
    assert.equal(rest.redriven, 0);
    assert.match(rest.skipped[0].skipped!, /not a dead-letter copy/);
    const got: ReceivedEvent[] = [];
    const bystander = await kit.subscribe({ topics: [target], group: kit.group(), handler: () => undefined });
    await kit.subscribe({ topics: [target], group: billing, handler: (e) => void got.push(e) });
    await waitFor(
      'the one sent, for its group only',
      () => got.length === 1 && bystander.stats.filtered === 1,
    );
    assert.equal(got[0].header(REDRIVE_HEADERS.group), billing);
    assert.equal(bystander.stats.handled, 0);
  });

  /** Writes records to `topic` as they are (plain kafkajs; transactional when asked, as a Java app may write). */
  async function write(topic: string, messages: Message[], transactional = false): Promise<void> {
    const kafka = new Kafka({ brokers: KAFKA_BROKERS, logLevel: logLevel.NOTHING });
    const producer = transactional
      ? kafka.producer({ transactionalId: `${topic}-tx`, idempotent: true, maxInFlightRequests: 1 })
      : kafka.producer();
    await producer.connect();
    try {
      if (!transactional) await producer.send({ topic, messages });
      else {
        const t = await producer.transaction();
        await t.send({ topic, messages });
        await t.commit();
      }
    } finally {
      await producer.disconnect();
    }
  }

  /** A dead-letter copy of an event of `topic`/`partition`/`offset` given up on by `group`. */
  const deadCopy = (
    topic: string,
    partition: number,
    offset: number,
    group: string,
    id?: string,
  ): Message => ({
    key: `k${offset}`,
    value: `"${offset}"`,
    headers: {
      ...(id ? { [HEADERS.id]: id } : {}),
      [HEADERS.contentType]: 'application/json',
      [DEAD_LETTER_HEADERS.topic]: topic,
      [DEAD_LETTER_HEADERS.partition]: String(partition),
      [DEAD_LETTER_HEADERS.offset]: String(offset),
      [DEAD_LETTER_HEADERS.group]: group,
    },
  });

  it('one run goes through many partitions and copies written in transactions (their markers end a partition)', async function () {
    const target = await kit.topic(1);
    const dlq = await kit.topic(6);
    const group = kit.group();
    const kafka = new Kafka({ brokers: KAFKA_BROKERS, logLevel: logLevel.NOTHING });
    for (let p = 0; p < 6; p++) {
      await write(dlq, [{ ...deadCopy(target, 0, p, group, `e-${p}`), partition: p }], p % 2 === 0);
    }
    // Before: a progress write joined the group (~5 s each), and a partition ending in a marker never ended.
    const r = await redrive({ ...CLIENT, deadLetterTopic: dlq, timeoutMs: 20_000 });
    assert.deepEqual([r.redriven, r.skipped.length, r.complete], [6, 0, true]);
    const admin = kafka.admin();
    await admin.connect();
    try {
      assert.equal((await admin.fetchTopicOffsets(target))[0].high, '6');
      await admin.deleteGroups([r.progressGroup]);
    } finally {
      await admin.disconnect();
    }
  });

  it('a copy whose partition is gone goes by key; one whose topic is gone is skipped; one without id gets its first id', async function () {
    const target = await kit.topic(1);
    const dlq = await kit.topic(1);
    const group = kit.group();
    await write(dlq, [
      deadCopy(target, 3, 10, group, 'lost-partition'), // the topic has 1 partition now
      deadCopy(`${target}-gone`, 0, 11, group, 'lost-topic'),
      deadCopy(target, 0, 12, group), // published without dmtp-event-id
    ]);
    const copies: RedriveCopy[] = [];
    const r = await redrive({ ...CLIENT, deadLetterTopic: dlq, onCopy: (c) => copies.push(c) });
    assert.deepEqual([r.redriven, r.skipped.length, r.complete], [2, 1, true]);
    assert.deepEqual(copies[0].to, { topic: target });
    assert.match(copies[1].skipped ?? '', new RegExp(`topic '${target}-gone' does not exist`));
    assert.equal(copies[2].id, `${target}:0:12`, 'the id a consumer gave the original');
    const got: ReceivedEvent[] = [];
    await kit.subscribe({ topics: [target], group, handler: (e) => void got.push(e) });
    await waitFor('both sent', () => got.length === 2);
    assert.deepEqual(got.map((e) => e.id).sort(), [`${target}:0:12`, 'lost-partition']);
  });

  it('sends a large backlog in requests under the broker message.max.bytes (a compressed dead-letter topic)', async function () {
    const target = await kit.topic(1);
    const dlq = await kit.topic(1);
    const group = kit.group();
    // 300 copies of 10 kB, written gzip-compressed (as a Java client may): one fetch holds 3 MB once unpacked.
    const big = 'x'.repeat(10_000);
    const producer = new Kafka({ brokers: KAFKA_BROKERS, logLevel: logLevel.NOTHING }).producer();
    await producer.connect();
    try {
      await producer.send({
        topic: dlq,
        compression: CompressionTypes.GZIP,
        messages: Array.from({ length: 300 }, (_, i) => ({
          ...deadCopy(target, 0, i, group, `b-${i}`),
          value: big,
        })),
      });
    } finally {
      await producer.disconnect();
    }
    // Before: the whole fetched batch went in one request, refused as larger than the broker's 1 MiB.
    const r = await redrive({ ...CLIENT, deadLetterTopic: dlq, timeoutMs: 30_000 });
    assert.deepEqual([r.redriven, r.complete], [300, true]);
    const admin = new Kafka({ brokers: KAFKA_BROKERS, logLevel: logLevel.NOTHING }).admin();
    await admin.connect();
    try {
      assert.equal((await admin.fetchTopicOffsets(target))[0].high, '300');
      await admin.deleteGroups([r.progressGroup]);
    } finally {
      await admin.disconnect();
    }
  });

  it('a run that finds another member in its progress group (another run) fails fast; after it, a run completes', async function () {
    const target = await kit.topic(1);
    const dlq = await kit.topic(2);
    const group = kit.group();
    for (let p = 0; p < 2; p++) {
      await write(dlq, [{ ...deadCopy(target, 0, p, group, `c-${p}`), partition: p }]);
    }
    // Another run, stood in for by a plain member of the progress group that holds what it is given.
    const kafka = new Kafka({ brokers: KAFKA_BROKERS, logLevel: logLevel.NOTHING });
    const other = kafka.consumer({
      groupId: defaultProgressGroup(dlq),
      sessionTimeout: 6_000,
      heartbeatInterval: 500,
    });
    await other.connect();
    let joined!: () => void;
    const isIn = new Promise<void>((r) => (joined = r));
    other.on(other.events.GROUP_JOIN, () => joined());
    await other.subscribe({ topics: [dlq], fromBeginning: true });
    await other.run({ autoCommit: false, eachBatch: async () => undefined });
    await isIn;
    try {
      // Before: this run waited for the partitions the other member held until its timeout, then gave up.
      await assert.rejects(
        redrive({ ...CLIENT, deadLetterTopic: dlq, timeoutMs: 40_000 }),
        (err: Error) =>
          err instanceof FailedPreconditionError && /another run holds partition/.test(err.message),
      );
    } finally {
      await other.disconnect();
    }
    const r = await redrive({ ...CLIENT, deadLetterTopic: dlq, timeoutMs: 40_000 });
    assert.deepEqual([r.redriven, r.complete], [2, true]);
    const admin = kafka.admin();
    await admin.connect();
    await admin.deleteGroups([r.progressGroup]).catch(() => undefined);
    await admin.disconnect();
  });

  it('refuses a topic that does not exist (NotFoundError) and bad options (InvalidArgumentError)', async function () {
    await assert.rejects(
      redrive({ ...CLIENT, deadLetterTopic: 'no-such-topic-dmtp-redrive' }),
      NotFoundError,
    );
    const dlq = await kit.topic(1);
    await assert.rejects(
      redrive({ ...CLIENT, deadLetterTopic: dlq, to: 'no-such-topic-dmtp-redrive' }),
      (err: Error) => err instanceof NotFoundError && /no-such-topic-dmtp-redrive/.test(err.message),
    );
    await assert.rejects(redrive({ ...CLIENT, deadLetterTopic: 'x', max: -1 }), /max must be a whole number/);
    await assert.rejects(redrive({ ...CLIENT, deadLetterTopic: 'x', progressGroup: 'a b' }), /progressGroup/);
  });
});
