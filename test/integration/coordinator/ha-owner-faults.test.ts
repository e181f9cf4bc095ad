/**
 * HA takeovers on real etcd with fake participants, in the situations an audit found wrong:
 * - a lock given up while etcd did not answer (an adoption that failed in an outage) stayed on the taker's live
 *   lease for good: nobody campaigned for the owner, the taker did not serve it, its restart waited for ever;
 * - an owner handed back kept its "finished since" time: taken over again much later (it crashed in phase 1),
 *   it was retired at the first check, its prepared branches left with nobody to tell them ABORT;
 * - a graceful stop sent its lingering record removals after giving up its fences: refused as fenced, read as a
 *   lost ownership (a step-down), and the finished records left for a taker to redo.
 */
import { strict as assert } from 'node:assert';
import * as rpc from 'etcd3/lib/rpc';
import { mintXid } from '../../../common';
import { haKeys } from '../../../coordinator/ha';
import { branch, FakeGateway } from '../../support/coordinator-fake-gateway';
import { waitFor } from '../../support/coordinator-wait';
import { inProcessHa } from '../../support/ha-in-process';

type KvMethod = (this: unknown, req: { key?: Buffer }, opts: unknown) => Promise<unknown>;
const kvProto = rpc.KVClient.prototype as unknown as { range: KvMethod; txn: KvMethod };

describe('coordinator HA: owners through etcd faults, hand-backs and stops', function () {
  this.timeout(40_000);
  const ha = inProcessHa();
  const start = ha.start;

  it('a lock given up in an etcd outage is deleted once etcd answers, and the owner is taken over again', async () => {
    await ha.etcd.put(haKeys.member(ha.prefix, 'dead')).value('dead'); // crashed: member key left, lock gone
    const [range, txn] = [kvProto.range, kvProto.txn];
    let downUntil = 0;
    // etcd "unreachable" for 1.5 s from the taker's first read of the dead owner's log (adopt, then release fail)
    kvProto.range = function (req, opts) {
      const key = req.key ? Buffer.from(req.key).toString() : '';
      if (key === `${ha.prefix}/tx/dead/` && downUntil === 0) downUntil = Date.now() + 1_500;
      if (Date.now() < downUntil) return Promise.reject(new Error('14 UNAVAILABLE: simulated outage'));
      return range.call(this, req, opts);
    };
    kvProto.txn = function (req, opts) {
      if (Date.now() < downUntil) return Promise.reject(new Error('14 UNAVAILABLE: simulated outage'));
      return txn.call(this, req, opts);
    };
    try {
      const s = await start('s');
      await waitFor('the outage', () => downUntil > 0);
      await waitFor('s takes dead over once etcd answers', () => s.adoptions.managerOf('dead') !== undefined);
      assert.deepEqual(s.ha!.owners().sort(), ['dead', 's']);
    } finally {
      kvProto.range = range;
      kvProto.txn = txn;
    }
  });

  it('an owner handed back and taken over again much later is judged afresh, not retired at once', async () => {
    const RETIRE_MS = 1_500;
    await ha.etcd.put(haKeys.member(ha.prefix, 'x')).value('x');
    const s = await start('s', new FakeGateway(), RETIRE_MS);
    await waitFor('s takes x over', () => s.adoptions.managerOf('x') !== undefined);
    await new Promise((r) => setTimeout(r, 500)); // s's retire checks find x finished (empty log, idle)
    const gx = new FakeGateway().set('b', { prepare: 'hang' });
    const x = await start('x', gx); // x restarts: s hands its transactions back
    await new Promise((r) => setTimeout(r, RETIRE_MS + 500)); // x runs longer than retireAfterMs
    const xid = mintXid('x', Date.now());
    void x.manager!.commit(xid, { branches: [branch('a'), branch('b')] }).catch(() => undefined);
    await waitFor('a prepared, b preparing', () => gx.callsFor(xid, 'prepare').length === 2);
    (x.ha as unknown as { lease: { release(): void } }).lease.release(); // x stops renewing: as if killed
    let retired = false;
    s.ha!.on('retired', (owner: string) => (retired ||= owner === 'x'));
    await waitFor('s takes x over again', () => s.adoptions.managerOf('x') !== undefined, 10_000);
    await new Promise((r) => setTimeout(r, RETIRE_MS / 2));
    assert.equal(retired, false, 'not retired before retireAfterMs');
    assert.notEqual(await ha.etcd.get(haKeys.member(ha.prefix, 'x')).string(), null);
  });

  it('a graceful stop right after commits sends their lingering record removals while it owns its log', async () => {
    const gw = new FakeGateway();
    const c = await start('c1', gw);
    let stepdown: string | undefined;
    c.on('stepdown', (reason: string) => (stepdown = reason));
    const xids = [mintXid('c1'), mintXid('c1'), mintXid('c1')];
    for (const x of xids) await c.manager!.commit(x, { branches: [branch('a'), branch('b')] });
    await waitFor('phase 2 acknowledged', () => xids.every((x) => gw.callsFor(x, 'commit').length === 2));
    await c.stop(); // the record removals still linger (finishLingerMs)
    assert.equal(stepdown, undefined, 'no lost ownership');
    assert.deepEqual(
      await ha.etcd.getAll().prefix(`${ha.prefix}/tx/c1/`).keys(),
      [],
      'no finished record left',
    );
  });
});
