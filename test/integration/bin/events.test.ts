import { strict as assert } from 'node:assert';
import type { Producer } from 'kafkajs';
import { createKafka, DEAD_LETTER_HEADERS, deleteTopics, ensureTopics, HEADERS } from '../../../events';
import { waitFor } from '../../support/coordinator-wait';
import { KAFKA_BROKERS, nameFor } from '../../support/env';
import { collect, plainLines, runCli, startCli } from './run-cli';

describe('dmtp events tail (real Kafka)', function () {
  this.timeout(40_000);
  let topic: string;
  let producer: Producer;

  before(async () => {
    producer = createKafka({ brokers: KAFKA_BROKERS }).producer();
    await producer.connect();
  });
  after(() => producer.disconnect());
  beforeEach(async function () {
    topic = nameFor(this, 40);
    await ensureTopics({ brokers: KAFKA_BROKERS }, [topic]);
  });
  afterEach(() => deleteTopics({ brokers: KAFKA_BROKERS }, [topic]));

  const send = (key: string, value: string, headers: Record<string, string> = {}) =>
    producer.send({ topic, messages: [{ key, value, headers }] });

  it('--from-beginning --max N prints key, headers and value of the first N messages, then exits', async () => {
    await send('order-1', '{"id":1}', { 'dmtp-event-type': 'OrderPlaced' });
    await send('order-2', '{"id":2}');
    await send('order-3', '{"id":3}');
    const json = await runCli([
      'events',
      'tail',
      topic,
      '--from-beginning',
      '--max',
      '2',
      '--json',
      '--timeout',
      '30s',
    ]);
    assert.equal(json.code, 0, json.stderr);
    const got = plainLines(json.stdout).map((l) => JSON.parse(l));
    assert.deepEqual(
      got.map((m) => [m.topic, m.partition, m.offset, m.key, m.headers, m.value]),
      [
        [topic, 0, '0', 'order-1', { 'dmtp-event-type': 'OrderPlaced' }, '{"id":1}'],
        [topic, 0, '1', 'order-2', {}, '{"id":2}'],
      ],
    );

    const human = await runCli([
      'events',
      'tail',
      topic,
      '--from-beginning',
      '--max',
      '1',
      '--timeout',
      '30s',
    ]);
    assert.equal(human.code, 0, human.stderr);
    assert.match(
      human.stdout,
      /^0:0 {2}\d{4}-\d\d-\d\dT\S+Z {2}key=order-1 {2}\{dmtp-event-type=OrderPlaced\} {2}\{"id":1\}\n$/,
    );
  });

  it('from the end by default: prints what arrives after it started, not what was there before', async () => {
    await send('old', 'before');
    const child = startCli(['events', 'tail', topic, '--max', '1', '--timeout', '30s']);
    const done = collect(child);
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    await waitFor('the tailing line', () => err.includes(`tailing ${topic} from the end`), 20_000);
    await send('new', 'after');
    const r = await done;
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /key=new {2}after\n$/);
    assert.doesNotMatch(r.stdout, /before/);
  });

  it('--timeout ends a quiet tail with exit 0; a missing topic or unreachable Kafka is one line and exit 1', async () => {
    const quiet = await runCli(['events', 'tail', topic, '--timeout', '1s']);
    assert.equal(quiet.code, 0, quiet.stderr);
    assert.equal(quiet.stdout, '');

    const missing = await runCli(['events', 'tail', `${topic}-missing`]);
    assert.equal(missing.code, 1);
    assert.deepEqual(plainLines(missing.stderr), [
      `dmtp events tail: topic '${topic}-missing' does not exist on Kafka at ${KAFKA_BROKERS.join(',')}`,
    ]);

    const down = await runCli(['events', 'tail', topic, '--brokers', '127.0.0.1:1']);
    assert.equal(down.code, 1);
    assert.deepEqual(plainLines(down.stderr), [
      'dmtp events tail: cannot reach Kafka at 127.0.0.1:1 (Connection error: connect ECONNREFUSED 127.0.0.1:1)',
    ]);
    assert.ok(down.ms < 10_000, `took ${down.ms} ms`);
  });
});

describe('dmtp events redrive (real Kafka)', function () {
  this.timeout(60_000);
  let dlq: string;
  let target: string;
  let producer: Producer;

  before(async () => {
    producer = createKafka({ brokers: KAFKA_BROKERS }).producer();
    await producer.connect();
  });
  after(() => producer.disconnect());
  beforeEach(async function () {
    dlq = `${nameFor(this, 40)}.dlq`;
    target = nameFor(this, 40);
    await ensureTopics({ brokers: KAFKA_BROKERS }, [dlq, target]);
  });
  afterEach(() => deleteTopics({ brokers: KAFKA_BROKERS }, [dlq, target]));

  /** A dead-letter copy as a DMTP subscription writes it. */
  const deadLetter = (id: string, extra: Record<string, string> = {}) => ({
    key: `k-${id}`,
    value: `{"id":"${id}"}`,
    headers: {
      [HEADERS.id]: id,
      [DEAD_LETTER_HEADERS.topic]: target,
      [DEAD_LETTER_HEADERS.partition]: '0',
      [DEAD_LETTER_HEADERS.offset]: '7',
      [DEAD_LETTER_HEADERS.group]: 'billing',
      [DEAD_LETTER_HEADERS.kind]: 'handler-failed',
      ...extra,
    },
  });

  it('--dry-run lists without sending; a run sends each copy back, one line each, and a second run has nothing left', async () => {
    await producer.send({ topic: dlq, messages: [deadLetter('e-1'), deadLetter('e-2')] });
    const dry = await runCli(['events', 'redrive', dlq, '--dry-run']);
    assert.equal(dry.code, 0, dry.stderr);
    assert.deepEqual(plainLines(dry.stdout), [
      `${dlq} 0:0  would go ${target}:0  id=e-1  group=billing  handler-failed`,
      `${dlq} 0:1  would go ${target}:0  id=e-2  group=billing  handler-failed`,
    ]);
    assert.match(dry.stderr, /would send 2, skipped 0 of .*; dry run: no progress kept/);

    const run = await runCli(['events', 'redrive', dlq, '--json']);
    assert.equal(run.code, 0, run.stderr);
    const lines = plainLines(run.stdout).map((l) => JSON.parse(l));
    assert.deepEqual(
      lines.map((c) => [c.topic, c.offset, c.id, c.to]),
      [
        [dlq, '0', 'e-1', { topic: target, partition: 0 }],
        [dlq, '1', 'e-2', { topic: target, partition: 0 }],
      ],
    );
    assert.match(
      run.stderr,
      new RegExp(`sent back 2, skipped 0 of .*; progress in group dmtp-redrive\\.${dlq}`),
    );
    const again = await runCli(['events', 'redrive', dlq]);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(plainLines(again.stdout).length, 0);
    assert.match(again.stderr, /sent back 0, skipped 0 of /);
    const ends = createKafka({ brokers: KAFKA_BROKERS }).admin();
    await ends.connect();
    try {
      assert.equal((await ends.fetchTopicOffsets(target))[0].high, '2', 'both copies are on the topic');
      await ends.deleteGroups([`dmtp-redrive.${dlq}`]).catch(() => undefined);
    } finally {
      await ends.disconnect();
    }
  });

  it('a copy without its value is skipped, named, and makes the exit code 1; the rest is still sent', async () => {
    await producer.send({
      topic: dlq,
      messages: [deadLetter('big', { [DEAD_LETTER_HEADERS.valueOmitted]: '5000000' }), deadLetter('ok')],
    });
    const run = await runCli(['events', 'redrive', dlq]);
    assert.equal(run.code, 1, run.stderr);
    const out = plainLines(run.stdout);
    assert.equal(out.length, 2);
    assert.match(
      out[0],
      /0:0 {2}skipped: the copy has no value \(5000000 bytes left out.*original is at .*\/0\/7/,
    );
    assert.match(out[1], /0:1 {2}→ .*:0 {2}id=ok/);
    assert.match(run.stderr, /sent back 1, skipped 1 of/);
    const admin = createKafka({ brokers: KAFKA_BROKERS }).admin();
    await admin.connect();
    await admin.deleteGroups([`dmtp-redrive.${dlq}`]).catch(() => undefined);
    await admin.disconnect();
  });
});

describe('dmtp events lag (real Kafka)', function () {
  this.timeout(40_000);
  let topic: string;
  let group: string;

  beforeEach(async function () {
    topic = nameFor(this, 40);
    group = `${topic}-g`;
    await ensureTopics({ brokers: KAFKA_BROKERS }, [topic]);
  });
  afterEach(() => deleteTopics({ brokers: KAFKA_BROKERS }, [topic]));

  it('prints each partition’s committed offset, end and lag; the total on stderr', async () => {
    const producer = createKafka({ brokers: KAFKA_BROKERS }).producer();
    await producer.connect();
    try {
      await producer.send({ topic, messages: [{ value: 'a' }, { value: 'b' }, { value: 'c' }] });
    } finally {
      await producer.disconnect();
    }
    const none = await runCli(['events', 'lag', group, '--topic', topic, '--json']);
    assert.equal(none.code, 0, none.stderr);
    assert.deepEqual(
      plainLines(none.stdout).map((l) => JSON.parse(l)),
      [{ group, topic, partition: 0, committed: null, end: 3, lag: 3 }],
    );
    assert.deepEqual(plainLines(none.stderr), [`group ${group}: 3 events behind on ${topic}`]);

    // The group commits offset 1 (what a consumer that handled the first event does).
    const admin = createKafka({ brokers: KAFKA_BROKERS }).admin();
    await admin.connect();
    try {
      await admin.setOffsets({ groupId: group, topic, partitions: [{ partition: 0, offset: '1' }] });
    } finally {
      await admin.disconnect();
    }
    const human = await runCli(['events', 'lag', group, '--topic', topic]);
    assert.equal(human.code, 0, human.stderr);
    assert.deepEqual(
      plainLines(human.stdout).map((l) => l.split(/\s+/)),
      [
        ['TOPIC', 'PARTITION', 'COMMITTED', 'END', 'LAG'],
        [topic, '0', '1', '3', '2'],
      ],
    );
    assert.deepEqual(plainLines(human.stderr), [`group ${group}: 2 events behind on ${topic}`]);
  });

  it('a missing topic or no --topic is one line and exit 1', async () => {
    const missing = await runCli(['events', 'lag', group, '--topic', `${topic}-missing`]);
    assert.equal(missing.code, 1);
    assert.deepEqual(plainLines(missing.stderr), [
      `dmtp events lag: consumer lag of group ${group}: topic '${topic}-missing' does not exist`,
    ]);
    const noTopic = await runCli(['events', 'lag', group]);
    assert.equal(noTopic.code, 1);
    assert.deepEqual(plainLines(noTopic.stderr), [
      'dmtp events lag: --topic is required (the topics the group reads)',
    ]);
  });
});

describe('dmtp events topics (real Kafka)', function () {
  this.timeout(40_000);
  let present: string;
  let absent: string;

  beforeEach(async function () {
    present = nameFor(this, 40);
    absent = `${present}-new`;
    await ensureTopics({ brokers: KAFKA_BROKERS }, [present], { partitions: 3 });
  });
  afterEach(() => deleteTopics({ brokers: KAFKA_BROKERS }, [present, absent]));

  it('says which named topics exist, with their partitions; --create makes the missing ones, leaving the rest', async () => {
    const asked = await runCli(['events', 'topics', `${present},${absent}`, '--json']);
    assert.equal(asked.code, 1, 'a named topic is missing');
    assert.deepEqual(
      plainLines(asked.stdout).map((l) => JSON.parse(l)),
      [
        { topic: present, state: 'present', partitions: 3 },
        { topic: absent, state: 'missing', partitions: 0 },
      ],
    );
    assert.deepEqual(plainLines(asked.stderr), [`missing: ${absent}`]);

    const created = await runCli([
      'events',
      'topics',
      `${present},${absent}`,
      '--create',
      '--partitions',
      '2',
    ]);
    assert.equal(created.code, 0, created.stderr);
    assert.deepEqual(
      plainLines(created.stdout).map((l) => l.split(/\s+/)),
      [
        ['TOPIC', 'PARTITIONS', 'STATE'],
        [present, '3', 'present'],
        [absent, '2', 'created'],
      ],
    );
    const all = await runCli(['events', 'topics', '--json']);
    assert.equal(all.code, 0, all.stderr);
    const listed = plainLines(all.stdout).map((l) => JSON.parse(l) as { topic: string });
    assert.ok(listed.some((r) => r.topic === absent) && listed.some((r) => r.topic === present));
    assert.ok(!listed.some((r) => r.topic.startsWith('__')), 'the brokers’ own topics are left out');
  });

  it('refuses an illegal name or --create without topics in one line, creating nothing', async () => {
    const bad = await runCli(['events', 'topics', `${absent},bad topic!`, '--create']);
    assert.equal(bad.code, 1);
    assert.deepEqual(plainLines(bad.stderr), [
      "dmtp events topics: illegal topic name 'bad topic!': only [a-zA-Z0-9._-] are legal",
    ]);
    const none = await runCli(['events', 'topics', '--create']);
    assert.equal(none.code, 1);
    assert.deepEqual(plainLines(none.stderr), ['dmtp events topics: --create needs the topics to create']);
    const zero = await runCli(['events', 'topics', absent, '--create', '--partitions', '0']);
    assert.equal(zero.code, 1);
    assert.deepEqual(plainLines(zero.stderr), ['dmtp events topics: --partitions must be 1 or more']);
    const after = await runCli(['events', 'topics', absent, '--json']);
    assert.equal(after.code, 1, 'still missing: nothing was created');
    const down = await runCli(['events', 'topics', absent, '--brokers', '127.0.0.1:1']);
    assert.equal(down.code, 1);
    const [only, ...rest] = plainLines(down.stderr);
    assert.deepEqual(rest, []);
    assert.match(only, /^dmtp events topics: .*\(Kafka at 127\.0\.0\.1:1\)$/);
  });
});
