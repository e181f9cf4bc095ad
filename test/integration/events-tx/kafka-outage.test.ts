// Kafka down for 10 s while transactions commit: commits keep being acknowledged (the events wait in the
// coordinator's log, visible as undelivered in List/Get), and everything is delivered once Kafka is back.
// The broker is the test's own (test/support/own-kafka.ts): the shared one is never stopped.
import { strict as assert } from 'node:assert';
import { ensureTopics } from '../../../events';
import { TxState } from '../../../proto/gen/dmtp/v1/types';
import { coordinatorClient, type CoordinatorClient } from '../../support/coordinator-client';
import { nameFor } from '../../support/env';
import { EventsTxEnv, until } from '../../support/events-tx-kit';
import { startOwnKafka, type OwnKafka } from '../../support/own-kafka';

describe('transactional events: Kafka broker down during commits', function () {
  this.timeout(120_000);
  let kafka: OwnKafka | undefined;
  let env: EventsTxEnv | undefined;
  let client: CoordinatorClient | undefined;

  after(async () => {
    client?.close();
    await env?.close();
    await kafka?.close();
  });

  it('acknowledges commits while Kafka is down, shows the backlog, and delivers everything after it returns', async function () {
    kafka = await startOwnKafka();
    const topic = nameFor(this, 40);
    await ensureTopics({ brokers: kafka.brokers }, [topic], { partitions: 1 });
    env = await new EventsTxEnv(this, kafka.brokers).start();
    client = coordinatorClient(env.address);
    const committed: string[] = [];
    let i = 0;
    const commitOne = async () => {
      const r = await env!.run('commit', [{ topic, key: `k${i % 3}`, value: { i } }]);
      i++;
      assert.equal(
        r.outcome,
        'committed',
        `transaction ${i} while Kafka is ${kafka!.running ? 'up' : 'down'}`,
      );
      committed.push(r.xid);
    };

    for (let n = 0; n < 10; n++) await commitOne();
    await kafka.stop();
    const downAt = Date.now();
    while (Date.now() - downAt < 10_000) {
      await commitOne();
      await new Promise((r) => setTimeout(r, 50));
    }
    const whileDown = committed.slice(10);
    assert.ok(whileDown.length >= 20, `only ${whileDown.length} commits while Kafka was down`);

    // The backlog is visible: committed, events staged and not delivered.
    const list = await client.list({ pageSize: 1000 });
    const undelivered = list.transactions.filter((t) => t.eventsStaged > 0 && !t.eventsDelivered);
    assert.ok(
      undelivered.length >= whileDown.length - 1,
      `${undelivered.length} undelivered in List, ${whileDown.length} committed while down`,
    );
    const last = await client.get({ xid: whileDown[whileDown.length - 1] });
    assert.equal(last.transaction?.eventsDelivered, false);
    assert.ok(
      last.transaction?.state === TxState.TX_STATE_COMMITTING ||
        last.transaction?.state === TxState.TX_STATE_COMMITTED,
      `state ${last.transaction?.state}`,
    );

    await kafka.restart();
    const got = await env.collect(topic, kafka.brokers);
    const expected = new Set(committed.map((x) => `${x}:0`));
    await until(
      () => `${got.length} of ${expected.size} events after Kafka returned`,
      () => got.length >= expected.size,
      45_000,
    );
    assert.deepEqual(new Set(got.map((e) => e.id)), expected);
    await until(
      () => 'the backlog to drain',
      async () => (await client!.list({ pageSize: 1000 })).transactions.length === 0,
      15_000,
    );
  });
});
