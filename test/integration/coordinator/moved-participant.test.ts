// Phase 2 follows a participant instance that came back at another address (a pod restarted with a new IP, a
// process on a new port): real etcd (log and registry), real gRPC, the coordinator's own gateway.
import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { mintXid } from '../../../common';
import { Coordinator } from '../../../coordinator/coordinator';
import { GrpcParticipantGateway, registryLocator } from '../../../coordinator/participant-gateway';
import { TxState, Vote } from '../../../proto/gen/dmtp/v1/types';
import { EtcdRegistry, MemoryRegistry } from '../../../registry';
import { coordinatorClient, type CoordinatorClient } from '../../support/coordinator-client';
import { waitFor } from '../../support/coordinator-wait';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { freePort } from '../../support/bench-process';
import { TestParticipant } from '../../support/test-participant';

const ID = 'coord-moved';

describe('coordinator: phase 2 to a participant that moved', function () {
  this.timeout(30_000);
  let etcd: Etcd3;
  let registry: EtcdRegistry;
  let coord: Coordinator;
  let client: CoordinatorClient;
  let prefix: string;
  const parts: TestParticipant[] = [];

  beforeEach(async function () {
    prefix = `/dmtp-test/${nameFor(this)}`;
    etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix, leaseTtlSeconds: 5 });
    coord = new Coordinator({
      id: ID,
      etcd: { endpoints: ETCD_ENDPOINTS, prefix },
      registry,
      ha: false,
      manager: { prepareTimeoutMs: 2_000, phase2Backoff: { initialMs: 20, maxMs: 200, multiplier: 2 } },
    });
    client = coordinatorClient(await coord.start());
  });
  afterEach(async () => {
    client.close();
    await coord.stop();
    for (const p of parts.splice(0)) await p.stop();
    await registry.close();
    await etcd.delete().prefix(prefix);
    etcd.close();
  });

  const participant = async (o: ConstructorParameters<typeof TestParticipant>[0]) => {
    const p = await new TestParticipant(o).start();
    parts.push(p);
    return p;
  };
  const logKeys = async () => (await etcd.getAll().prefix(`${prefix}/tx/`).keys()).length;

  it('finds the instance at its new address in the registry and commits its branch there', async () => {
    const moving = await participant({ name: 'moving', registry, switches: { failCommitTimes: 1_000_000 } });
    const other = await participant({ name: 'other' });
    const oldAddress = moving.address;
    const x = mintXid(ID);
    const branches = [moving.branch('a'), other.branch('b')];
    assert.equal((await client.commit({ xid: x, branches })).state, TxState.TX_STATE_COMMITTED);
    // Phase 2 to `moving` fails and is retried; meanwhile it stops and comes back elsewhere, branch prepared.
    await waitFor('a first phase-2 commit attempt', () => moving.calls.some((c) => c.op === 'commit'));
    await moving.stop();
    moving.switches.failCommitTimes = 0;
    let port = await freePort();
    while (`127.0.0.1:${port}` === oldAddress) port = await freePort();
    moving.options.port = port;
    await moving.start();
    assert.notEqual(moving.address, oldAddress, 'the instance came back at another address');
    assert.equal(moving.fate(x, 'a'), 'prepared');

    await waitFor('the branch committed at the new address', () => moving.fate(x, 'a') === 'committed');
    assert.equal(other.fate(x, 'b'), 'committed');
    await waitFor('the transaction finished and left the log', async () => (await logKeys()) === 0);
  });
  it('keeps the branch committing while a stranger at its old address answers NOT_FOUND and the instance is down', async () => {
    const moving = await participant({ name: 'moving', registry, switches: { failCommitTimes: 1_000_000 } });
    const other = await participant({ name: 'other' });
    const oldAddress = moving.address;
    const x = mintXid(ID);
    assert.equal(
      (await client.commit({ xid: x, branches: [moving.branch('a'), other.branch('b')] })).state,
      TxState.TX_STATE_COMMITTED,
    );
    await waitFor('a first phase-2 commit attempt', () => moving.calls.some((c) => c.op === 'commit'));
    await moving.stop(); // deregistered; its branch stays prepared
    // A participant that checks no instance ids takes the old address.
    const squatter = await participant({
      name: 'squatter',
      port: Number(oldAddress.split(':')[1]),
      switches: { notFoundUnknown: true },
    });
    assert.equal(squatter.address, oldAddress);
    await waitFor(
      'the squatter asked twice',
      () => squatter.calls.filter((c) => c.op === 'commit').length >= 2,
    );
    // Before, its first NOT_FOUND counted the branch as committed: the transaction ended and left the log while
    // the branch was still prepared at the instance.
    assert.equal((await client.get({ xid: x })).transaction?.state, TxState.TX_STATE_COMMITTING);
    assert.equal(await logKeys(), 1);
    assert.equal(moving.fate(x, 'a'), 'prepared');

    moving.switches.failCommitTimes = 0;
    let port = await freePort();
    while (`127.0.0.1:${port}` === oldAddress) port = await freePort();
    moving.options.port = port;
    await moving.start();
    await waitFor(
      'the branch committed where the instance is now',
      () => moving.fate(x, 'a') === 'committed',
    );
    await waitFor('the transaction finished and left the log', async () => (await logKeys()) === 0);
  });
});

describe('participant gateway: following an instance that moved (real gRPC, a locator the test controls)', () => {
  const parts: TestParticipant[] = [];
  let gateway: GrpcParticipantGateway | undefined;
  afterEach(async () => {
    gateway?.close();
    for (const p of parts.splice(0)) await p.stop();
  });
  const participant = async (o: ConstructorParameters<typeof TestParticipant>[0]) => {
    const p = await new TestParticipant(o).start();
    parts.push(p);
    return p;
  };

  it('asks again at the located address when another instance at the recorded one does not know the branch', async () => {
    const real = await participant({ name: 'real' });
    const squatter = await participant({ name: 'squatter', switches: { notFoundUnknown: true } });
    const x = mintXid('gw');
    // The branch as recorded: at an address the squatter has taken over since.
    const ref = { ...real.branch('a'), address: squatter.address };
    const gw = new GrpcParticipantGateway({
      locate: async (s, i) => (s === 'real' && i === 'real' ? real.address : undefined),
    });
    gateway = gw;
    assert.equal((await gw.prepare(real.branch('a'), x, 2_000)).vote, Vote.VOTE_PREPARED);
    assert.equal((await gw.commit(ref, x, false, 2_000)).committed, true);
    assert.equal(real.fate(x, 'a'), 'committed');
    assert.deepEqual(
      squatter.calls.map((c) => c.op),
      ['commit'],
      'asked the squatter once, then the real instance',
    );
    // From then on the instance is called where it was found.
    await gw.commit(ref, x, false, 2_000);
    assert.equal(squatter.calls.length, 1);
  });

  it('also after INVALID_ARGUMENT (an SDK participant at the old address refusing another kind of id)', async () => {
    const real = await participant({ name: 'real' });
    const squatter = await participant({ name: 'squatter', switches: { refuseIds: true } });
    const x = mintXid('gw');
    const gw = new GrpcParticipantGateway({ locate: async () => real.address });
    gateway = gw;
    assert.equal((await gw.prepare(real.branch('orders:1'), x, 2_000)).vote, Vote.VOTE_PREPARED);
    const ref = { ...real.branch('orders:1'), address: squatter.address };
    assert.equal((await gw.commit(ref, x, false, 2_000)).committed, true);
    assert.equal(real.fate(x, 'orders:1'), 'committed');
    assert.deepEqual(
      squatter.calls.map((c) => c.op),
      ['commit'],
    );
  });

  it('redirects only branches that recorded the old address: a branch enlisted since goes where it recorded', async () => {
    const gone = await new TestParticipant({ name: 'gone' }).start();
    const interim = await participant({ name: 'interim' }); // where the registry showed the instance then
    const now = await participant({ name: 'now' }); // where it is now: newer branches recorded this
    const oldAddress = gone.address;
    await gone.stop(); // nobody at the old address (the others were bound first: none of them can have it)
    const gw = new GrpcParticipantGateway({ locate: async () => interim.address });
    gateway = gw;
    const x = mintXid('gw');
    await gw.rollback({ ...now.branch('old'), address: oldAddress }, x, 'test', 2_000);
    assert.deepEqual(
      interim.calls.map((c) => c.branchId),
      ['old'],
      'the old branch was followed to where the instance was found',
    );
    assert.equal((await gw.prepare(now.branch('new'), x, 2_000)).vote, Vote.VOTE_PREPARED);
    assert.deepEqual(
      now.calls.map((c) => c.branchId),
      ['new'],
      'a branch recorded at the current address is not redirected',
    );
    assert.equal(interim.calls.length, 1);
  });

  it('does not take a Commit NOT_FOUND from the old address as the answer while the instance is registered nowhere', async () => {
    // A participant that checks no instance ids (not the SDK) took the old address; the instance is down. Before,
    // its NOT_FOUND reached phase 2, which counted the branch as committed and purged.
    const squatter = await participant({ name: 'squatter', switches: { notFoundUnknown: true } });
    let asked = 0;
    const gw = new GrpcParticipantGateway({ locate: async () => (asked++, undefined) });
    gateway = gw;
    const ref = { ...squatter.branch('a'), service: 'gone', instanceId: 'gone-1' };
    const x = mintXid('gw');
    await assert.rejects(gw.commit(ref, x, false, 2_000), (e: Error & { code?: number }) => {
      assert.equal(e.code, 14);
      assert.match(
        e.message,
        /not taken as the branch's answer: no instance gone-1 of gone is registered there/,
      );
      return true;
    });
    assert.equal(asked, 1);
    assert.deepEqual(
      squatter.calls.map((c) => c.op),
      ['commit'],
      'nothing was sent anywhere else',
    );
  });

  it('takes a Commit NOT_FOUND as the answer when the registry shows the instance at that address', async () => {
    const real = await participant({ name: 'real', switches: { notFoundUnknown: true } });
    const gw = new GrpcParticipantGateway({ locate: async () => real.address });
    gateway = gw;
    await assert.rejects(
      gw.commit(real.branch('a'), mintXid('gw'), false, 2_000),
      (e: Error & { code?: number }) => e.code === 5,
    );
  });

  it("the registry locator reads an instance without starting a watch of the branch's service", async () => {
    // Before, every service name a Commit named (a request's input) left an etcd watch for good.
    const registry = new MemoryRegistry();
    try {
      await registry.register({ service: 'real', instanceId: 'real-1', address: '127.0.0.1:9' });
      const locate = registryLocator(() => registry);
      assert.equal(await locate('real', 'real-1'), '127.0.0.1:9');
      assert.equal(await locate('made-up', 'x'), undefined);
      assert.deepEqual(registry.cached('real'), [], 'no watch started for it');
    } finally {
      await registry.close();
    }
  });

  it('after a stopped instance (UNAVAILABLE) sends the call to where it is now', async () => {
    const real = await participant({ name: 'real' });
    const oldAddress = real.address;
    const x = mintXid('gw');
    const gw = new GrpcParticipantGateway({ locate: async () => real.address });
    gateway = gw;
    assert.equal((await gw.prepare(real.branch('a'), x, 2_000)).vote, Vote.VOTE_PREPARED);
    await real.stop();
    let port = await freePort();
    while (`127.0.0.1:${port}` === oldAddress) port = await freePort();
    real.options.port = port;
    await real.start();
    assert.notEqual(real.address, oldAddress);
    const ref = { ...real.branch('a'), address: oldAddress };
    assert.equal((await gw.commit(ref, x, false, 2_000)).committed, true);
    assert.equal(real.fate(x, 'a'), 'committed');
  });
});
