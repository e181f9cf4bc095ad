/**
 * Consumer lag and EventMetrics against the real Kafka: a group's lag before it consumed anything, while its
 * handler holds a partition, and after it caught up; the counters of handled, filtered, retried and
 * dead-lettered events; a lag scrape that Kafka cannot answer.
 */
import { strict as assert } from 'node:assert';
import { NotFoundError } from '../../../common';
import { consumerLag, EventMetrics, KafkaUnavailableError, type ConsumerLag } from '../../../events';
import { CLIENT, EventsKit } from '../../support/events-kit';
import { parse, value } from '../metrics/scrape';

describe('events: consumer lag and EventMetrics (real Kafka)', function () {
  this.timeout(30_000);
  let kit: EventsKit;
  beforeEach(function () {
    kit = new EventsKit(this);
  });
  afterEach(() => kit.close());

  /** Polls `read` until `ok` holds for what it read (async reads: the events kit's waitFor is synchronous). */
  async function until<T>(what: string, read: () => Promise<T>, ok: (v: T) => boolean): Promise<T> {
    let last!: T;
    const deadline = Date.now() + 15_000;
    while (!ok((last = await read()))) {
      if (Date.now() > deadline)
        throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    return last;
  }

  it('reports per partition what the group has not committed, and 0 once it caught up', async () => {
    const topic = await kit.topic(2);
    const group = kit.group();
    const producer = kit.producer();
    const ends = [0, 0];
    for (let i = 0; i < 8; i++) {
      const report = await producer.publish(topic, { key: `k${i}`, value: { i } });
      assert.equal(report.status, 'sent');
      if (report.status === 'sent') ends[report.partition]++;
    }
    assert.ok(ends[0] > 0 && ends[1] > 0, `the keys spread over both partitions (${ends})`);

    const before: ConsumerLag = await consumerLag({ ...CLIENT, group, topics: [topic] });
    assert.equal(before.lag, 8, 'nothing committed: every event is ahead of the group');
    assert.deepEqual(
      before.topics[0].partitions.map((p) => [p.partition, p.committed, p.end, p.lag]),
      [
        [0, null, ends[0], ends[0]],
        [1, null, ends[1], ends[1]],
      ],
    );

    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let seen = 0;
    const sub = await kit.subscribe({
      topics: [topic],
      group,
      concurrency: 2,
      handler: async (e) => {
        seen++;
        if (e.partition === 0) await held; // partition 0 waits until released
      },
    });
    await until(
      'partition 1 committed',
      () => sub.lag(),
      (l) => l.topics[0].partitions[1].lag === 0,
    );
    const mid = await sub.lag();
    assert.ok(mid.topics[0].partitions[0].lag >= 1, 'partition 0 is held by its handler: still behind');
    release();
    const after = await until(
      'the group caught up',
      () => sub.lag(),
      (l) => l.lag === 0,
    );
    assert.deepEqual(
      after.topics[0].partitions.map((p) => [p.committed, p.end]),
      [
        [ends[0], ends[0]],
        [ends[1], ends[1]],
      ],
    );
    assert.equal(seen, 8);
  });

  it('names a topic that does not exist, and says when Kafka cannot be asked', async () => {
    const group = kit.group();
    await assert.rejects(
      consumerLag({ ...CLIENT, group, topics: ['dmtp-no-such-topic-for-lag'] }),
      (err: unknown) =>
        err instanceof NotFoundError &&
        /topic 'dmtp-no-such-topic-for-lag' does not exist/.test(err.message) &&
        (err.details as { group: string }).group === group,
    );
    await assert.rejects(
      consumerLag({
        brokers: ['127.0.0.1:1'],
        connectionTimeoutMs: 200,
        requestRetries: 0,
        group,
        topics: ['t'],
      }),
      (err: unknown) => err instanceof KafkaUnavailableError && err.message.includes(`group ${group}`),
    );
  });

  it('exports each outcome, retries and the lag per group and topic; a lag Kafka cannot give keeps the last value', async () => {
    const topic = await kit.topic(1);
    const group = kit.group();
    const metrics = new EventMetrics({ lagTimeoutMs: 2_000 });
    let failsLeft = 1;
    const sub = await kit.subscribe({
      topics: [topic],
      group,
      retries: 1,
      filter: (e) => e.keyText !== 'skip',
      handler: (e) => {
        if (e.keyText === 'poison') throw new Error('cannot handle this one');
        if (e.keyText === 'flaky' && failsLeft-- > 0) throw new Error('once');
      },
    });
    await sub.joined();
    const untrack = metrics.track(sub);
    const producer = kit.producer();
    for (const key of ['a', 'b', 'skip', 'flaky', 'poison'])
      await producer.publish(topic, { key, value: {} });

    const scrape = async () => parse(await metrics.text());
    const done = await until(
      'every event finished and committed',
      scrape,
      (s) =>
        value(s, 'dmtp_events_consumed_total', { group, outcome: 'dead_lettered' }) === 1 &&
        value(s, 'dmtp_events_consumer_lag', { group, topic }) === 0,
    );
    assert.equal(value(done, 'dmtp_events_consumed_total', { group, outcome: 'handled' }), 3);
    assert.equal(value(done, 'dmtp_events_consumed_total', { group, outcome: 'filtered' }), 1);
    assert.equal(value(done, 'dmtp_events_handler_retries_total', { group }), 2, 'flaky once, poison once');
    assert.equal(value(done, 'dmtp_events_consumer_lag_failures_total', { group }), 0);

    // Untracked: the counts stay (a counter never goes back), the lag series goes.
    untrack();
    const later = await scrape();
    assert.equal(value(later, 'dmtp_events_consumed_total', { group, outcome: 'handled' }), 3);
    assert.equal(later.filter((s) => s.name === 'dmtp_events_consumer_lag').length, 0);

    // A subscription whose lag never comes (stubbed on this subscription: a Kafka that accepts connections and never
    // answers cannot be subscribed to in the first place): the scrape still answers, counting the miss.
    const dead = new EventMetrics({ lagTimeoutMs: 300 });
    const deadSub = Object.create(sub) as typeof sub;
    let answers = true;
    Object.defineProperty(deadSub, 'lag', {
      value: () => (answers ? sub.lag() : new Promise<ConsumerLag>(() => undefined)),
    });
    dead.track(deadSub);
    const lagSeries = (s: ReturnType<typeof parse>) =>
      s.filter((x) => x.name === 'dmtp_events_consumer_lag' && x.labels.group === group);
    assert.deepEqual(
      lagSeries(parse(await dead.text())).map((x) => [x.labels.topic, x.value]),
      [[topic, 0]],
    );
    answers = false;
    const missed = parse(await dead.text());
    assert.equal(value(missed, 'dmtp_events_consumer_lag_failures_total', { group }), 1);
    assert.deepEqual(
      lagSeries(missed).map((x) => [x.labels.topic, x.value]),
      [[topic, 0]],
      'the last lag read is kept',
    );
  });

  it('exports what a producer published, by outcome, and the topics it holds missing', async () => {
    const topic = await kit.topic();
    const producer = kit.producer({ allowAutoTopicCreation: false });
    const metrics = new EventMetrics();
    const untrack = metrics.trackProducer(producer, 'app');
    for (let i = 0; i < 3; i++) assert.equal((await producer.publish(topic, { value: i })).status, 'sent');
    const missing = await producer.publish(`${topic}-missing`, { value: 'x' });
    assert.equal(missing.status === 'failed' && missing.reason, 'topic-unavailable');
    const bad = await producer.publish('bad topic', { value: 'y' });
    assert.equal(bad.status === 'failed' && bad.reason, 'invalid-topic');
    const samples = parse(await metrics.text());
    const published = (outcome: string) =>
      value(samples, 'dmtp_events_published_total', { producer: 'app', outcome });
    assert.deepEqual(
      [
        published('sent'),
        published('topic_unavailable'),
        published('invalid_topic'),
        published('unavailable'),
      ],
      [3, 1, 1, 0],
    );
    assert.equal(value(samples, 'dmtp_events_producer_missing_topics', { producer: 'app' }), 1);
    assert.equal(value(samples, 'dmtp_events_producer_queued', { producer: 'app' }), 0);
    untrack();
  });
});
