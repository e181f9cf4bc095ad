import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { Kafka, logLevel, type Consumer, type KafkaMessage } from 'kafkajs';
import { mintXid } from '../../../common';
import { Coordinator } from '../../../coordinator/coordinator';
import type { EventProducer } from '../../../events';
import { TxState } from '../../../proto/gen/dmtp/v1/types';
import { coordinatorClient } from '../../support/coordinator-client';
import { waitFor } from '../../support/coordinator-wait';
import { ETCD_ENDPOINTS, KAFKA_BROKERS, nameFor } from '../../support/env';
import { countRequestsNaming } from '../../support/events-kit';
import { TestParticipant } from '../../support/test-participant';
import { samplesAt, value } from '../metrics/scrape';

/** A test's names (its events topic, lifecycle topic, etcd prefix) and its Kafka and etcd clients. */
function fixture(ctx: Mocha.Context) {
  const name = nameFor(ctx);
  const kafka = new Kafka({ clientId: name, brokers: KAFKA_BROKERS, logLevel: logLevel.NOTHING });
  return {
    name,
    topic: `${name}-orders`,
    lifeTopic: `${name}-life`,
    prefix: `/dmtp-test/${name}`,
    kafka,
    admin: kafka.admin(),
    etcd: new Etcd3({ hosts: ETCD_ENDPOINTS }),
  };
}

describe('coordinator outbox relay to real Kafka', function () {
  this.timeout(60_000);

  it('publishes a committed transaction’s staged events with stable ids, never an aborted one’s, and lifecycle notices', async function () {
    const { name, topic, lifeTopic, prefix, kafka, admin, etcd } = fixture(this);
    const parts = [
      await new TestParticipant({ name: 'kafka-a' }).start(),
      await new TestParticipant({ name: 'kafka-b', switches: { voteAbort: ['no'] } }).start(),
    ];
    const coord = new Coordinator({
      id: 'coord-kafka',
      etcd: { endpoints: ETCD_ENDPOINTS, prefix },
      kafka: { brokers: KAFKA_BROKERS, lifecycleTopic: lifeTopic },
    });
    let consumer: Consumer | undefined;
    const client = coordinatorClient(await coord.start());
    try {
      await admin.connect();
      await admin.createTopics({ topics: [{ topic }, { topic: lifeTopic }], waitForLeaders: true });
      const ev = (v: string, seq = 0) => ({
        topic,
        key: Buffer.from('order-1'),
        value: Buffer.from(v),
        headers: { type: 'OrderPlaced' },
        sequence: seq,
      });

      const aborted = mintXid('coord-kafka');
      const r1 = await client.commit({
        xid: aborted,
        branches: [parts[0].branch('a'), parts[1].branch('no')],
        events: [ev('never')],
      });
      assert.equal(r1.state, TxState.TX_STATE_ABORTED);
      const committed = mintXid('coord-kafka');
      const r2 = await client.commit({
        xid: committed,
        branches: [parts[0].branch('a'), parts[1].branch('b')],
        events: [ev('first'), ev('second')],
      });
      assert.equal(r2.state, TxState.TX_STATE_COMMITTED);
      await waitFor(
        'the record removed after delivery',
        async () => (await etcd.getAll().prefix(`${prefix}/tx/`).keys()).length === 0,
        30_000,
      );

      const got: { topic: string; m: KafkaMessage }[] = [];
      consumer = kafka.consumer({ groupId: name });
      await consumer.connect();
      await consumer.subscribe({ topics: [topic, lifeTopic], fromBeginning: true });
      void consumer.run({
        eachMessage: async ({ topic: t, message }) => void got.push({ topic: t, m: message }),
      });
      await waitFor(
        'both events and the committed and aborted notices',
        () =>
          got.filter((g) => g.topic === topic).length >= 2 &&
          got.some(
            (g) =>
              g.topic === lifeTopic &&
              g.m.key?.toString() === committed &&
              /committed/.test(String(g.m.headers?.type)),
          ) &&
          // The aborted one's notice travels separately (its own key, maybe its own partition): wait for it
          // too rather than race it; the assertion below still names what is missing if it never comes.
          got.some((g) => g.topic === lifeTopic && g.m.key?.toString() === aborted),
        40_000,
      );
      const events = got.filter((g) => g.topic === topic).map((g) => g.m);
      assert.deepEqual(
        events.map((m) => [
          m.headers!['dmtp-event-id']!.toString(),
          m.headers!['dmtp-xid']!.toString(),
          m.value!.toString(),
        ]),
        [
          [`${committed}:0`, committed, 'first'],
          [`${committed}:1`, committed, 'second'],
        ],
      );
      assert.ok(
        !events.some((m) => m.headers!['dmtp-xid']!.toString() === aborted),
        'an aborted transaction’s event was published',
      );
      const kinds = got
        .filter((g) => g.topic === lifeTopic && g.m.key?.toString() === aborted)
        .map((g) => String(g.m.headers!.type));
      assert.ok(kinds.includes('transaction.aborted'), `lifecycle of the aborted one: ${kinds}`);
    } finally {
      await consumer?.disconnect();
      client.close();
      await coord.stop();
      await Promise.all(parts.map((p) => p.stop()));
      await admin.deleteTopics({ topics: [topic, lifeTopic] }).catch(() => undefined);
      await admin.disconnect();
      await etcd.delete().prefix(prefix);
      etcd.close();
    }
  });

  it('with Kafka for lifecycle notices only (`events: false`), a Commit with events is refused, not relayed', async function () {
    // Before, a lifecycle topic made the coordinator relay staged events to Kafka too, whatever `--event-sink none`
    // said: the operator's "no events here" was silently ignored.
    const name = nameFor(this);
    const prefix = `/dmtp-test/${name}`;
    const coord = new Coordinator({
      id: 'coord-life-only',
      etcd: { endpoints: ETCD_ENDPOINTS, prefix },
      kafka: { brokers: KAFKA_BROKERS, lifecycleTopic: `${name}-life`, events: false },
    });
    const client = coordinatorClient(await coord.start());
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    try {
      await assert.rejects(
        client.commit({
          xid: mintXid('coord-life-only'),
          branches: [],
          events: [
            {
              topic: `${name}-orders`,
              key: Buffer.from('k'),
              value: Buffer.from('v'),
              headers: {},
              sequence: 0,
            },
          ],
        }),
        /has no event sink: it cannot commit staged events/,
      );
    } finally {
      client.close();
      await coord.stop();
      await etcd.delete().prefix(prefix);
      etcd.close();
    }
  });

  it('a lifecycle topic missing (auto-create off) is found before any request names it: the relay’s events go on without waiting behind it', async function () {
    // Before, relay and notices shared a producer whose every request naming the missing topic waited out
    // kafkajs' retries (~8 s), the staged events of every transaction queued behind it, round after round.
    const { name, topic, lifeTopic, prefix, kafka, admin, etcd } = fixture(this);
    const part = await new TestParticipant({ name: 'kafka-life' }).start();
    const coord = new Coordinator({
      id: 'coord-life-missing',
      etcd: { endpoints: ETCD_ENDPOINTS, prefix },
      kafka: { brokers: KAFKA_BROKERS, lifecycleTopic: lifeTopic, allowAutoTopicCreation: false },
      metricsPort: 0,
    });
    let consumer: Consumer | undefined;
    const client = coordinatorClient(await coord.start());
    try {
      // The coordinator's own producer (made at start).
      const own = (coord as unknown as { producer: EventProducer }).producer;
      const asked = countRequestsNaming(own, lifeTopic);
      await admin.connect();
      await admin.createTopics({ topics: [{ topic }], waitForLeaders: true });
      const xids: string[] = [];
      for (let i = 0; i < 10; i++) {
        const xid = mintXid('coord-life-missing');
        xids.push(xid);
        const r = await client.commit({
          xid,
          branches: [part.branch(`b${i}`)],
          events: [
            { topic, key: Buffer.from(`k${i}`), value: Buffer.from(`v${i}`), headers: {}, sequence: 0 },
          ],
        });
        assert.equal(r.state, TxState.TX_STATE_COMMITTED);
      }
      await waitFor(
        'every record removed after delivery',
        async () => (await etcd.getAll().prefix(`${prefix}/tx/`).keys()).length === 0,
        40_000,
      );
      const got: string[] = [];
      consumer = kafka.consumer({ groupId: name });
      await consumer.connect();
      await consumer.subscribe({ topics: [topic], fromBeginning: true });
      void consumer.run({
        eachMessage: async ({ message }) => void got.push(String(message.headers!['dmtp-xid'])),
      });
      await waitFor('the ten events', () => got.length >= 10, 30_000);
      assert.deepEqual([...got].sort(), [...xids].sort());
      assert.equal(asked.count(), 0, 'the missing lifecycle topic was looked up, and no request named it');
      assert.ok(!(await admin.listTopics()).includes(lifeTopic), 'the coordinator did not create it');
      // Its metrics say so: the producer holds one topic missing, its notices failed topic_unavailable.
      const samples = await samplesAt(coord.metricsAddress!);
      const mine = { producer: 'coordinator', coordinator: 'coord-life-missing' };
      assert.equal(value(samples, 'dmtp_events_producer_missing_topics', mine), 1);
      assert.ok(
        value(samples, 'dmtp_events_published_total', { ...mine, outcome: 'topic_unavailable' }) >= 20,
      );
      assert.ok(value(samples, 'dmtp_events_published_total', { ...mine, outcome: 'sent' }) >= 10);
    } finally {
      await consumer?.disconnect();
      client.close();
      await coord.stop();
      await part.stop();
      await admin.deleteTopics({ topics: [topic, lifeTopic] }).catch(() => undefined);
      await admin.disconnect();
      await etcd.delete().prefix(prefix);
      etcd.close();
    }
  });
});
