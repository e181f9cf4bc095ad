import { strict as assert } from 'node:assert';
import type { Producer } from 'kafkajs';
import { createKafka, deleteTopics, ensureTopics } from '../../../events';
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
