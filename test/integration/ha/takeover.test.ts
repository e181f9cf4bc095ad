// Coordinator HA on the shared etcd: several coordinators (child processes, 2 s ownership leases) on one prefix.
// A coordinator killed after a durable commit decision has its transaction finished by a survivor, which then
// answers for it (routing by owner) and hands it back when the dead one restarts with the same id. A coordinator
// paused (SIGSTOP) past its lease while deciding is taken over, and once resumed (SIGCONT) every write it tries
// is refused by the fence: it writes nothing and steps down.
import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { mintXid } from '../../../common';
import { Outcome, TxState } from '../../../proto/gen/dmtp/v1/types';
import { EtcdRegistry } from '../../../registry';
import { createDmtp, currentTx } from '../../../txapi';
import { addBranch } from '../../../txapi/context';
import { coordinatorClient, type CoordinatorClient } from '../../support/coordinator-client';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import {
  logRecords,
  ownerRoute,
  spawnHaCoordinator,
  waitFor,
  type HaChild,
} from '../../support/ha-coordinator';
import { TestParticipant } from '../../support/test-participant';
import { freePort } from '../../support/bench-process';

describe('coordinator HA: takeover, routing, hand-back and fencing', function () {
  this.timeout(60_000);
  let etcd: Etcd3;
  let prefix = '';
  let children: HaChild[] = [];
  let parts: TestParticipant[] = [];
  let clients: CoordinatorClient[] = [];
  let registry: EtcdRegistry | undefined;

  before(() => {
    etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
  });

  afterEach(async () => {
    for (const c of clients) c.close();
    await registry?.close();
    registry = undefined;
    for (const c of children) await c.kill();
    for (const p of parts) await p.stop();
    if (prefix) await etcd.delete().prefix(prefix);
    children = [];
    parts = [];
    clients = [];
  });

  after(() => etcd.close());

  const start = async (id: string, more: Partial<Parameters<typeof spawnHaCoordinator>[0]> = {}) => {
    const c = await spawnHaCoordinator({ id, prefix, endpoints: ETCD_ENDPOINTS, ...more });
    children.push(c);
    return c;
  };

  it('a survivor finishes a killed coordinator’s committed transaction, answers for it, and hands it back', async function () {
    prefix = `/t/${nameFor(this)}`;
    const p = await new TestParticipant({ name: 'p' }).start();
    parts.push(p);
    const a = await start('ha-a', { failpoint: 'after-decision-before-phase2:exit:1' });
    const b = await start('ha-b');
    const c = await start('ha-c');
    const client = coordinatorClient(a.address);
    clients.push(client);

    const xid = mintXid('ha-a');
    const commit = client.commit({ xid, branches: [p.branch('b1'), p.branch('b2')] }, 10_000).catch((e) => e);
    assert.equal(await a.exited, 137, 'the coordinator died right after its durable commit decision');
    const killedAt = Date.now();
    await commit;
    await waitFor(
      'the survivor to commit both branches',
      () => p.fate(xid, 'b1') === 'committed' && p.fate(xid, 'b2') === 'committed',
      10_000,
    );
    const takeoverMs = Date.now() - killedAt;
    await waitFor(
      'the dead owner’s log to be empty',
      async () => (await logRecords(etcd, prefix)).length === 0,
      5_000,
    );
    const taker = await ownerRoute(etcd, prefix, 'ha-a');
    assert.ok(
      taker === b.address || taker === c.address,
      `ha-a's transactions are answered by a survivor (${taker})`,
    );

    // Routing by owner: the initiator's outcomeOf and a participant's QueryOutcome reach the taker.
    registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    const dmtp = createDmtp({ registry });
    try {
      assert.deepEqual(await dmtp.outcomeOf(xid), { status: 'committed' });
    } finally {
      dmtp.close();
    }
    const takerClient = coordinatorClient(taker!);
    clients.push(takerClient);
    assert.equal((await takerClient.queryOutcome({ xid, branchId: 'b1' })).outcome, Outcome.OUTCOME_COMMIT);
    // The taker starts nothing new for the dead owner: a Commit it never saw aborts and rolls its branches back.
    const late = mintXid('ha-a');
    const r = await takerClient.commit({ xid: late, branches: [p.branch('l1'), p.branch('l2')] });
    assert.equal(r.state, TxState.TX_STATE_ABORTED);
    await waitFor('the late branches rolled back', () => p.fate(late, 'l1') === 'rolled-back', 5_000);

    // The dead coordinator comes back with its id: it waits for the hand-back instead of fighting the taker.
    const a2 = await start('ha-a', { readyTimeoutMs: 15_000 });
    assert.equal(
      await ownerRoute(etcd, prefix, 'ha-a'),
      a2.address,
      'ha-a answers for its own transactions again',
    );
    const a2Client = coordinatorClient(a2.address);
    clients.push(a2Client);
    const again = mintXid('ha-a');
    assert.equal(
      (await a2Client.commit({ xid: again, branches: [p.branch('x1'), p.branch('x2')] })).state,
      TxState.TX_STATE_COMMITTED,
    );
    this.test!.title += ` (takeover ${takeoverMs} ms)`;
  });

  it('a taker retires a dead coordinator id once all it owned has been finished long enough', async function () {
    // Before, an owner taken over was held for good: every coordinator that died with the default id
    // (<hostname>-<pid>, never seen again) left a manager and a log on a survivor, and its member key in etcd.
    prefix = `/t/${nameFor(this)}`;
    const p = await new TestParticipant({ name: 'ret' }).start();
    parts.push(p);
    const a = await start('ret-a', { failpoint: 'after-decision-before-phase2:exit:1' });
    const b = await start('ret-b', { env: { DMTP_HA_RETIRE_AFTER_MS: '1500' } });
    const client = coordinatorClient(a.address);
    clients.push(client);
    const member = () => etcd.get(`${prefix}/ha/members/ret-a`).string();

    const xid = mintXid('ret-a');
    await client.commit({ xid, branches: [p.branch('b1'), p.branch('b2')] }, 10_000).catch(() => undefined);
    assert.equal(await a.exited, 137, 'the coordinator died right after its durable commit decision');
    await waitFor(
      'ret-b to take ret-a over',
      async () => (await ownerRoute(etcd, prefix, 'ret-a')) === b.address,
      10_000,
    );
    await waitFor('the survivor to commit both branches', () => p.fate(xid, 'b2') === 'committed', 10_000);
    assert.ok(await member(), 'still a member while its transaction was being finished');
    await waitFor('ret-a to be retired', async () => (await member()) === null, 10_000);
    assert.equal(await ownerRoute(etcd, prefix, 'ret-a'), undefined, 'nobody answers for it any more');
    assert.equal(await etcd.get(`${prefix}/ha/owners/ret-a`).string(), null);
    assert.deepEqual(await logRecords(etcd, prefix), []);
    // Not taken over again, and the survivor goes on serving.
    await new Promise((r) => setTimeout(r, 1_000));
    assert.equal(await etcd.get(`${prefix}/ha/owners/ret-a`).string(), null);
    const bClient = coordinatorClient(b.address);
    clients.push(bClient);
    const own = mintXid('ret-b');
    assert.equal(
      (await bClient.commit({ xid: own, branches: [p.branch('c1'), p.branch('c2')] })).state,
      TxState.TX_STATE_COMMITTED,
    );
  });

  it('initiators stop picking a coordinator killed with -9 at once, and pick it again once it is back', async function () {
    prefix = `/t/${nameFor(this)}`;
    const p = await new TestParticipant({ name: 'pick' }).start();
    parts.push(p);
    // Registrations live as long as the ownership lease: 6 s, so the dead one stays listed through the test.
    const port = await freePort();
    const a = await start('pick-a', { leaseTtlSeconds: 6, port });
    await start('pick-b', { leaseTtlSeconds: 6 });
    registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    const dmtp = createDmtp({ registry, commitTimeoutMs: 5_000 });
    const once = async (i: number) => {
      const tx = await dmtp.begin();
      await tx.run(async () => {
        addBranch(currentTx()!, p.branch(`${tx.xid}-1`));
        addBranch(currentTx()!, p.branch(`${tx.xid}-2`));
      });
      return { i, owner: tx.xid.split(':')[0], outcome: await tx.commit() };
    };
    try {
      const before = [];
      for (let i = 0; i < 6; i++) before.push(await once(i));
      assert.deepEqual(new Set(before.map((r) => r.owner)), new Set(['pick-a', 'pick-b']), 'both in use');
      assert.ok(before.every((r) => r.outcome.status === 'committed'));

      await a.kill();
      await new Promise((r) => setTimeout(r, 200)); // the initiator's stream to it breaks
      const listed = async () =>
        (await registry!.instances('dmtp-coordinator')).some((i) => i.instanceId === 'pick-a');
      assert.ok(await listed(), 'the killed coordinator is still registered');
      const after = [];
      for (let i = 0; i < 20; i++) after.push(await once(i));
      assert.ok(await listed(), 'still registered after the run: the registry did not do the avoiding');
      assert.deepEqual(
        after.filter((r) => r.outcome.status !== 'committed' || r.owner !== 'pick-b'),
        [],
        'every transaction after the kill went to the live coordinator and committed',
      );

      // Back at the same address: a probe stream sees it, and it gets transactions again.
      await start('pick-a', { leaseTtlSeconds: 6, port, readyTimeoutMs: 20_000 });
      const t0 = Date.now();
      let back: Awaited<ReturnType<typeof once>> | undefined;
      for (let i = 0; !back && Date.now() - t0 < 15_000; i++) {
        const r = await once(i);
        assert.equal(r.outcome.status, 'committed', JSON.stringify(r));
        if (r.owner === 'pick-a') back = r;
        else await new Promise((res) => setTimeout(res, 100));
      }
      assert.ok(back, 'the restarted coordinator was never picked again');
    } finally {
      dmtp.close();
    }
  });

  it('a coordinator paused past its lease writes nothing once resumed and steps down', async function () {
    prefix = `/t/${nameFor(this)}`;
    const p = await new TestParticipant({ name: 'slow', switches: { prepareDelayMs: 1_000 } }).start();
    parts.push(p);
    const a = await start('ha-p');
    const b = await start('ha-q');
    const client = coordinatorClient(a.address);
    clients.push(client);

    const xids = Array.from({ length: 5 }, () => mintXid('ha-p'));
    const commits = xids.map((xid) =>
      client.commit({ xid, branches: [p.branch(`${xid}-1`), p.branch(`${xid}-2`)] }, 20_000).then(
        (res) => res.state,
        (err: Error) => err.message,
      ),
    );
    await waitFor('the prepares to reach the participant', () => p.calls.length >= 10, 5_000, 20);
    a.proc.kill('SIGSTOP');
    await waitFor(
      'the survivor to take over',
      async () => (await ownerRoute(etcd, prefix, 'ha-p')) === b.address,
      15_000,
    );

    // From here on nothing may change under the paused owner's log keys.
    const events: string[] = [];
    const watcher = await etcd.watch().prefix(`${prefix}/tx/ha-p/`).create();
    watcher.on('put', (kv) => events.push(`put ${kv.key.toString()}`));
    watcher.on('delete', (kv) => events.push(`delete ${kv.key.toString()}`));
    try {
      a.proc.kill('SIGCONT');
      assert.equal(await a.exited, 3, 'the resumed coordinator stepped down');
      const down = a.lines.find((l) => l.steppedDown) as { fencedWrites: number; reason: string };
      assert.ok(down, 'it printed its step-down line');
      assert.ok(
        down.fencedWrites >= 1,
        `its decision writes were refused by the fence: ${JSON.stringify(down)}`,
      );
      const results = await Promise.all(commits);
      assert.ok(
        results.every((s) => s !== TxState.TX_STATE_COMMITTED),
        `no commit was acknowledged: ${JSON.stringify(results)}`,
      );
      await new Promise((r) => setTimeout(r, 300));
      assert.deepEqual(events, [], 'the fenced-out coordinator wrote nothing');
    } finally {
      await watcher.cancel();
    }
    // Its in-doubt branches resolve to abort through the taker (presumed abort), and nothing is left.
    await waitFor(
      'every in-doubt branch resolved',
      async () => (await p.resolveInDoubt(b.address)) >= 0 && p.inDoubt().length === 0,
      10_000,
      200,
    );
    for (const xid of xids) assert.notEqual(p.fate(xid, `${xid}-1`), 'committed');
    assert.deepEqual(await logRecords(etcd, prefix), []);
  });
});
