// InitiatorMetrics over a real coordinator (etcd log), a participant service and a server that is not one, all on
// etcd: what the transactions of a Dmtp came to, how many run, and the calls a server answered without taking part.
import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Coordinator } from '../../../coordinator';
import { EtcdRegistry } from '../../../registry';
import { client, startServer, type RpcServer } from '../../../rpc';
import { createDmtp, InitiatorMetrics, txClientMiddleware, type Dmtp } from '../../../txapi';
import { rawMethod } from '../../support/echo-service';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { startNoopParticipant, type NoopParticipant } from '../../support/noop-participant';
import { freePort } from '../../support/txapi-bank';

/**
 * A method of its own (the warning of an ignored call is said once per method and process: other tests' methods
 * must not be this test's).
 */
const AUDIT = {
  note: rawMethod('/dmtp.test.Audit/Note'),
};

/** The value of one series in the exposition text, 0 when absent. */
async function value(metrics: InitiatorMetrics, series: string): Promise<number> {
  const text = await metrics.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

describe('InitiatorMetrics: a Dmtp’s transactions, on a real coordinator', function () {
  this.timeout(60_000);
  let registry: EtcdRegistry;
  let coordinator: Coordinator | undefined;
  let ledger: NoopParticipant | undefined;
  let audit: RpcServer | undefined;
  let dmtp: Dmtp | undefined;
  let dir: string;

  before(async function () {
    const prefix = `/${nameFor(this, 40)}`;
    registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dmtp-initiator-metrics-'));
    coordinator = new Coordinator({ id: 'metrics-coord', etcd: { endpoints: ETCD_ENDPOINTS, prefix } });
    const address = await coordinator.start();
    dmtp = createDmtp({ coordinator: { id: coordinator.id, address }, initiator: 'shop' });
    ledger = await startNoopParticipant({ service: 'ledger', registry, dir });
    audit = await startServer({
      registry,
      port: await freePort(),
      instance: { instanceId: 'audit-1' },
      services: [{ name: 'audit', definition: AUDIT, handlers: { note: ({ request }) => request } }],
      drainDelayMs: 0,
      gracePeriodMs: 500,
    });
  });

  after(async () => {
    dmtp?.close();
    await ledger?.stop();
    await audit?.stop();
    await coordinator?.stop();
    await registry.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('counts commits, aborts and the running ones by initiator, and calls answered without taking part', async () => {
    const metrics = new InitiatorMetrics();
    const untrack = metrics.track(dmtp!);
    const auditClient = client(registry, 'audit', AUDIT, { middleware: [txClientMiddleware] });
    try {
      const ignoredBefore = await value(metrics, 'dmtp_initiator_calls_ignored_total');
      for (let i = 0; i < 3; i++) await dmtp!.transaction(() => ledger!.c.noop(Buffer.from('x')));
      await dmtp!.transaction(async () => {
        await ledger!.c.noop(Buffer.from('x'));
        await auditClient.note(Buffer.from('a')); // a server with no participant middleware
        await auditClient.note(Buffer.from('b'));
      });
      await dmtp!.transaction(async () => undefined); // nothing to commit: committed here
      await assert.rejects(
        dmtp!.transaction(async () => {
          await ledger!.c.noop(Buffer.from('x'));
          throw new Error('changed my mind');
        }),
        /changed my mind/,
      );
      const held = await dmtp!.begin();
      await held.run(() => ledger!.c.noop(Buffer.from('x')));

      assert.deepEqual(dmtp!.stats, { committed: 5, aborted: 1, unknown: 0, running: 1 });
      const series = (outcome: string) =>
        value(metrics, `dmtp_initiator_transactions_total{initiator="shop",outcome="${outcome}"}`);
      assert.equal(await series('committed'), 5);
      assert.equal(await series('aborted'), 1);
      assert.equal(await series('unknown'), 0);
      assert.equal(await value(metrics, 'dmtp_initiator_transactions_running{initiator="shop"}'), 1);
      assert.equal(
        (await value(metrics, 'dmtp_initiator_calls_ignored_total')) - ignoredBefore,
        2,
        'each call counts (the warning is said once per method)',
      );

      assert.equal((await held.rollback('done with it')).status, 'aborted');
      assert.equal(await value(metrics, 'dmtp_initiator_transactions_running{initiator="shop"}'), 0);
      // Untracked: its counts stay in the totals (a counter never goes back), its running gauge goes.
      untrack();
      assert.equal(await series('aborted'), 2);
      assert.equal(await series('committed'), 5);
      assert.equal(await value(metrics, 'dmtp_initiator_transactions_running{initiator="shop"}'), 0);
      assert.throws(() => metrics.track(dmtp!, ''), /name must be a non-empty string/);

      // Tracked again: what it counted since is added, what it counted before is not added twice.
      const untrackAgain = metrics.track(dmtp!);
      assert.throws(() => metrics.track(dmtp!), /tracked already \(as 'shop'\)/);
      await dmtp!.transaction(() => ledger!.c.noop(Buffer.from('x')));
      untrack(); // the first undo again: a no-op, the second tracking stays
      assert.equal(await series('committed'), 6);
      assert.equal(await series('aborted'), 2);
      untrackAgain();
      assert.equal(await series('committed'), 6);
    } finally {
      auditClient.close();
    }
  });
});
