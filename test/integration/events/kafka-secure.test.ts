/**
 * Kafka over TLS and SASL: a broker of this file's own (test/support/own-kafka.ts) with an SSL listener and a
 * SASL_SSL one (PLAIN), its certificate from the machine's openssl. Producer, subscription, lag and the
 * coordinator's relay go through them with `ssl`/`sasl`; a plaintext client and a wrong password are refused.
 */
import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { mintXid } from '../../../common';
import { Coordinator } from '../../../coordinator';
import {
  ensureTopics,
  EventProducer,
  KafkaUnavailableError,
  subscribe,
  type KafkaClientOptions,
  type ReceivedEvent,
  type Subscription,
} from '../../../events';
import { TxState } from '../../../proto/gen/dmtp/v1/types';
import { coordinatorClient } from '../../support/coordinator-client';
import { waitFor } from '../../support/coordinator-wait';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { FAST_GROUP } from '../../support/events-kit';
import { startOwnKafka, type OwnKafka } from '../../support/own-kafka';
import { testPki } from '../../support/tls';

describe('events over TLS and SASL (a Kafka of the test’s own)', function () {
  this.timeout(120_000);
  const pki = testPki();
  const ssl = { ca: [pki.ca] };
  const sasl = Object.freeze({ mechanism: 'plain' as const, username: 'dmtp', password: 'dmtp-secret' });
  let kafka: OwnKafka;
  const stops: (() => Promise<unknown>)[] = [];

  before(async () => {
    kafka = await startOwnKafka({
      port: 29192,
      controllerPort: 29193,
      secure: {
        sslPort: 29194,
        saslPort: 29195,
        cert: pki.files.cert,
        key: pki.files.key,
        ca: pki.files.ca,
        users: { dmtp: 'dmtp-secret' },
      },
    });
  });
  after(() => kafka?.close());
  afterEach(async () => {
    for (const stop of stops.splice(0).reverse()) await stop();
  });

  const producer = (o: Omit<KafkaClientOptions, 'brokers'> & { brokers: string[] }) => {
    const p = new EventProducer({ requestRetries: 1, connectionTimeoutMs: 2_000, ...o });
    stops.push(() => p.stop());
    return p;
  };
  const collect = async (client: KafkaClientOptions, topic: string, group: string) => {
    const seen: ReceivedEvent[] = [];
    const sub: Subscription = await subscribe({
      ...client,
      ...FAST_GROUP,
      topics: [topic],
      group,
      fromBeginning: true,
      handler: (e) => void seen.push(e),
    });
    stops.push(() => sub.stop());
    return { seen, sub };
  };

  it('publishes, consumes and reads lag over TLS; a plaintext client to the TLS listener is refused', async function () {
    const topic = `${nameFor(this, 30)}-tls`;
    const client = { brokers: kafka.sslBrokers, ssl };
    await ensureTopics(client, [topic]);
    const report = await producer(client).publish(topic, { key: 'k', value: { over: 'tls' } });
    assert.equal(report.status, 'sent', JSON.stringify(report));
    const { seen, sub } = await collect(client, topic, `${topic}-g`);
    await waitFor('the event over TLS', () => seen.length === 1);
    assert.deepEqual(seen[0].value, { over: 'tls' });
    await waitFor('its offset committed', async () => (await sub.lag()).lag === 0);

    await assert.rejects(producer({ brokers: kafka.sslBrokers }).start(), (err: unknown) => {
      assert.ok(err instanceof KafkaUnavailableError, String(err));
      assert.match(err.message, /Closed connection|Connection error/);
      return true;
    });
  });

  it('SASL_SSL: the right user publishes and consumes; a wrong password is refused', async function () {
    const topic = `${nameFor(this, 30)}-sasl`;
    const client = { brokers: kafka.saslBrokers, ssl, sasl };
    await ensureTopics(client, [topic]);
    assert.equal((await producer(client).publish(topic, { value: 'hello' })).status, 'sent');
    const { seen } = await collect(client, topic, `${topic}-g`);
    await waitFor('the event over SASL_SSL', () => seen.length === 1);

    // The same settings with another password: kafkajs writes its authenticator into the sasl object it gets, and
    // a copy of a used one logged in with the first password. DMTP hands it a fresh copy, never the caller's.
    assert.ok(!('authenticationProvider' in sasl), 'the caller’s sasl object is not written');
    const wrong = producer({ ...client, sasl: { ...sasl, password: 'nope' } });
    await assert.rejects(wrong.start(), (err: unknown) => {
      assert.ok(err instanceof KafkaUnavailableError, String(err));
      assert.match(err.message, /SASL|[Aa]uthentication/);
      return true;
    });
  });

  it('the coordinator relays a committed transaction’s staged events over SASL_SSL', async function () {
    const topic = `${nameFor(this, 30)}-relay`;
    const client = { brokers: kafka.saslBrokers, ssl, sasl };
    await ensureTopics(client, [topic]);
    const prefix = `/dmtp-test/${nameFor(this)}`;
    const coord = new Coordinator({
      id: 'kafka-sasl',
      etcd: { endpoints: ETCD_ENDPOINTS, prefix },
      kafka: { brokers: kafka.saslBrokers, ssl, sasl },
    });
    const c = coordinatorClient(await coord.start());
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    stops.push(async () => {
      c.close();
      await coord.stop();
      await etcd.delete().prefix(prefix);
      etcd.close();
    });
    const xid = mintXid('kafka-sasl');
    const event = { topic, key: Buffer.from('k'), value: Buffer.from('"relayed"'), headers: {}, sequence: 0 };
    const res = await c.commit({ xid, events: [event] });
    assert.equal(res.state, TxState.TX_STATE_COMMITTED, res.abortReason);
    const { seen } = await collect(client, topic, `${topic}-g`);
    await waitFor('the relayed event', () => seen.length === 1, 20_000);
    assert.equal(seen[0].id, `${xid}:0`);
  });
});
