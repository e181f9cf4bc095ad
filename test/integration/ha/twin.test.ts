// A coordinator started with the id of one that is still running (a second deploy, a copy-pasted unit file).
// Before, it took the running one's lock over as if it were a restart: the running one was fenced out and stepped
// down, its in-flight commits ending "unknown" — or, on the same fixed port, both ended (the twin then failed to
// bind). Now the start asks the address the lock routes to (gRPC health for 'dmtp-coordinator/<id>') and refuses
// when that coordinator answers SERVING; a previous incarnation that does not answer (dead, paused) is taken over.
import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { FailedPreconditionError } from '../../../common';
import { Coordinator } from '../../../coordinator';
import { TxState } from '../../../proto/gen/dmtp/v1/types';
import { coordinatorClient } from '../../support/coordinator-client';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { ownerRoute, spawnHaCoordinator, waitFor, type HaChild } from '../../support/ha-coordinator';

describe('coordinator HA: a second coordinator with the id of a running one', function () {
  this.timeout(40_000);
  let prefix: string;
  let etcd: Etcd3;
  const children: HaChild[] = [];
  const inProcess: Coordinator[] = [];

  beforeEach(function () {
    prefix = `/dmtp-test/${nameFor(this)}`;
    etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
  });
  afterEach(async () => {
    for (const c of inProcess.splice(0)) await c.stop();
    for (const c of children.splice(0)) await c.kill();
    await etcd.delete().prefix(prefix);
    etcd.close();
  });

  /** A coordinator child with this id and lease TTL, once its route names it. */
  async function serving(id: string, leaseTtlSeconds: number): Promise<HaChild> {
    const c = await spawnHaCoordinator({ id, prefix, endpoints: ETCD_ENDPOINTS, leaseTtlSeconds });
    children.push(c);
    await waitFor('its route', async () => (await ownerRoute(etcd, prefix, id)) === c.address, 5_000);
    return c;
  }

  it('is refused, naming where the running one serves; the running one goes on untouched', async () => {
    const a = await serving('twin', 10);
    const lockBefore = await etcd.get(`${prefix}/ha/owners/twin`).exec();

    const b = new Coordinator({
      id: 'twin',
      etcd: { endpoints: ETCD_ENDPOINTS, prefix },
      ha: { leaseTtlSeconds: 10 },
    });
    inProcess.push(b);
    await assert.rejects(b.start(), (err: Error) => {
      assert.ok(err instanceof FailedPreconditionError, String(err));
      assert.match(
        err.message,
        new RegExp(`^coordinator 'twin' is already running, serving at ${a.address}:`),
      );
      return true;
    });
    assert.equal(b.state, 'stopped');

    const lockAfter = await etcd.get(`${prefix}/ha/owners/twin`).exec();
    assert.equal(
      String(lockAfter.kvs[0]?.mod_revision),
      String(lockBefore.kvs[0]?.mod_revision),
      'lock untouched',
    );
    assert.equal(await ownerRoute(etcd, prefix, 'twin'), a.address);
    await new Promise((r) => setTimeout(r, 1_000)); // a few of its scans: it would see a lost lock here
    assert.equal(a.proc.exitCode, null, 'the running coordinator did not step down');
    const client = coordinatorClient(a.address);
    try {
      const { xid } = await client.begin({ timeoutMs: 10_000, initiator: 'twin-test' });
      assert.equal((await client.commit({ xid, branches: [] })).state, TxState.TX_STATE_COMMITTED);
    } finally {
      client.close();
    }
  });

  it('takes a paused previous incarnation over before its lease ends; resumed, that one steps down', async () => {
    const a = await serving('paused', 20);
    a.proc.kill('SIGSTOP');
    // Its lease has 20 s left: the restart gets no health answer within the probe's 2 s and takes the lock over.
    const b = await spawnHaCoordinator({
      id: 'paused',
      prefix,
      endpoints: ETCD_ENDPOINTS,
      leaseTtlSeconds: 20,
      readyTimeoutMs: 15_000,
    });
    children.push(b);
    assert.equal(await ownerRoute(etcd, prefix, 'paused'), b.address);
    a.proc.kill('SIGCONT');
    assert.equal(await a.exited, 3, 'the resumed incarnation stepped down');
  });
});
