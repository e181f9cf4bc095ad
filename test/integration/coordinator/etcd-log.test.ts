import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { mintXid } from '../../../common';
import { EtcdTxLog } from '../../../coordinator/log/etcd-log';
import { MARKER_BUCKET_MS } from '../../../coordinator/log/etcd-markers';
import { TxState } from '../../../proto/gen/dmtp/v1/types';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { record, txLogContract } from '../../support/tx-log-contract';

let prefix = '';
txLogContract('etcd', {
  async make(ctx) {
    prefix = `/dmtp-test/${nameFor(ctx)}`;
    return new EtcdTxLog({ endpoints: ETCD_ENDPOINTS, prefix });
  },
  async reopen() {
    return new EtcdTxLog({ endpoints: ETCD_ENDPOINTS, prefix });
  },
  async cleanup() {
    const c = new Etcd3({ hosts: ETCD_ENDPOINTS });
    await c.delete().prefix(prefix);
    c.close();
  },
});

describe('EtcdTxLog', function () {
  let client: Etcd3;
  let log: EtcdTxLog | undefined;
  before(() => {
    client = new Etcd3({ hosts: ETCD_ENDPOINTS });
  });
  afterEach(async () => {
    await log?.close();
    log = undefined;
  });
  after(() => client.close());

  it('stores records under <prefix>/tx/<owner>/<xid> and batches concurrent writes into few txns', async function () {
    const p = `/dmtp-test/${nameFor(this)}`;
    log = new EtcdTxLog({ client, prefix: p, maxBatchOps: 100 });
    const xids = Array.from({ length: 300 }, () => mintXid('batcher'));
    await Promise.all(xids.map((x) => log!.create(record(x))));
    assert.ok(log.stats.txns <= 6, `300 writes took ${log.stats.txns} txns`);
    assert.equal(log.stats.ops, 300);
    const keys = await client.getAll().prefix(`${p}/tx/batcher/`).keys();
    assert.equal(keys.length, 300);
    assert.ok(keys.includes(`${p}/tx/batcher/${xids[0]}`));
    await client.delete().prefix(p);
  });

  it('refuses to load an owner whose log holds a record it cannot read, naming the key', async function () {
    const p = `/dmtp-test/${nameFor(this)}`;
    log = new EtcdTxLog({ client, prefix: p });
    const good = mintXid('reader');
    await log.create(record(good));
    const bad = `${p}/tx/reader/${mintXid('reader')}`;
    await client.put(bad).value('{"v":99,"written":"by a newer coordinator"}');
    await assert.rejects(log.load('reader'), (e: Error) => {
      assert.match(e.message, new RegExp(`record ${bad} is unreadable .*refusing to recover without it`));
      return true;
    });
    await client.delete().prefix(p);
  });

  it('one record losing its compare does not fail the others in its batch', async function () {
    const p = `/dmtp-test/${nameFor(this)}`;
    log = new EtcdTxLog({ client, prefix: p });
    const taken = mintXid('batcher');
    await log.create(record(taken, TxState.TX_STATE_PREPARING));
    const fresh = [mintXid('batcher'), mintXid('batcher')];
    const results = await Promise.allSettled([
      log.create(record(taken, TxState.TX_STATE_COMMITTING)),
      ...fresh.map((x) => log!.create(record(x))),
    ]);
    assert.deepEqual(
      results.map((r) => r.status),
      ['rejected', 'fulfilled', 'fulfilled'],
    );
    await client.delete().prefix(p);
  });

  it('a failing fence fails the whole batch and writes nothing', async function () {
    const p = `/dmtp-test/${nameFor(this)}`;
    const fenceKey = Buffer.from(`${p}/owner`);
    log = new EtcdTxLog({
      client,
      prefix: p,
      fence: () => [{ key: fenceKey, target: 'Value', result: 'Equal', value: Buffer.from('me') }],
    });
    await client.put(fenceKey.toString()).value('someone-else');
    const xid = mintXid('fenced');
    await assert.rejects(log.create(record(xid)), /fence/);
    assert.equal(await log.get(xid), undefined);
    await client.delete().prefix(p);
  });

  it('committed markers share a few keys per bucket, on the retention lease, and read back from a fresh log', async function () {
    const p = `/dmtp-test/${nameFor(this)}`;
    log = new EtcdTxLog({ client, prefix: p });
    const now = Date.now();
    // Two mint-time buckets, 300 finished commits each, all finished at once.
    const xids = [
      ...Array.from({ length: 300 }, () => mintXid('marker', now)),
      ...Array.from({ length: 300 }, () => mintXid('marker', now - MARKER_BUCKET_MS)),
    ];
    await Promise.all(xids.map((x) => log!.create(record(x, TxState.TX_STATE_COMMITTING))));
    await Promise.all(xids.map((x, i) => log!.finishCommitted(x, 1_000 + i)));
    assert.deepEqual(await client.getAll().prefix(`${p}/tx/`).keys(), [], 'every record is gone');
    const keys = await client.getAll().prefix(`${p}/done/marker/`).keys();
    assert.ok(keys.length >= 2 && keys.length <= 2 * log.stats.txns, `${keys.length} marker keys`);
    assert.ok(keys.length <= 20, `600 markers took ${keys.length} keys`);
    const kv = (await client.kv.range({ key: Buffer.from(keys[0]) })).kvs[0];
    assert.notEqual(String(kv.lease), '0', 'marker keys are on the retention lease');

    const fresh = new EtcdTxLog({ client, prefix: p });
    try {
      const found = await Promise.all(xids.map((x) => fresh.committedMarker(x)));
      assert.deepEqual(
        found.map((m) => m?.decidedAtMs),
        xids.map((_, i) => 1_000 + i),
      );
      assert.equal(fresh.stats.markerReads, 2, 'one read per bucket, the rest answered from it');
      assert.equal(
        await fresh.committedMarker(mintXid('marker', now)),
        undefined,
        'same bucket, not finished',
      );
      assert.equal(await fresh.committedMarker(mintXid('other', now)), undefined, 'another owner');
    } finally {
      await fresh.close();
    }
    await client.delete().prefix(p);
  });

  it('finishes arriving over time share marker keys: one txn of them per finishLingerMs, whatever the rate', async function () {
    const p = `/dmtp-test/${nameFor(this)}`;
    const now = Date.now();
    const markerKeys = async (owner: string, lingerMs: number) => {
      const l = new EtcdTxLog({ client, prefix: p, finishLingerMs: lingerMs });
      try {
        const xids = Array.from({ length: 200 }, () => mintXid(owner, now)); // one marker bucket
        await Promise.all(xids.map((x) => l.create(record(x, TxState.TX_STATE_COMMITTING))));
        const done: Promise<void>[] = [];
        for (let i = 0; i < 20; i++) {
          // 10 finishes every ~15 ms: each arrives in a write batch of its own
          for (const x of xids.slice(i * 10, i * 10 + 10)) done.push(l.finishCommitted(x, 7));
          await new Promise((r) => setTimeout(r, 15));
        }
        await Promise.all(done);
        const found = await Promise.all(xids.map((x) => l.committedMarker(x)));
        assert.ok(found.every((m) => m?.decidedAtMs === 7));
        return (await client.getAll().prefix(`${p}/done/${owner}/`).keys()).length;
      } finally {
        await l.close();
      }
    };
    const lingered = await markerKeys('lingered', 100);
    const each = await markerKeys('each', 0);
    // ~300 ms of finishes: the first goes at once, the rest in one txn per 100 ms.
    assert.ok(lingered <= 6, `200 finishes over ~300 ms took ${lingered} marker keys`);
    assert.ok(each >= 15, `with finishLingerMs 0 each write batch puts its own key (${each})`);
    assert.deepEqual(await client.getAll().prefix(`${p}/tx/`).keys(), [], 'every record is gone');
    await client.delete().prefix(p);
  });

  it('a lone finish goes at once; one lingering is sent by close (drained), not dropped', async function () {
    const p = `/dmtp-test/${nameFor(this)}`;
    // A linger far beyond the test's timeout: a finish that waited for it would time the test out.
    log = new EtcdTxLog({ client, prefix: p, finishLingerMs: 600_000 });
    const [first, second] = [mintXid('lone'), mintXid('lone')];
    await Promise.all([first, second].map((x) => log!.create(record(x, TxState.TX_STATE_COMMITTING))));
    await log.finishCommitted(first, 1);
    let secondDone = false;
    const pending = log.finishCommitted(second, 2).then(() => (secondDone = true));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(secondDone, false, 'the one right after lingers');
    await log.close();
    log = undefined;
    await pending;
    const fresh = new EtcdTxLog({ client, prefix: p });
    try {
      assert.deepEqual(await fresh.committedMarker(second), { decidedAtMs: 2 });
      assert.deepEqual(await client.getAll().prefix(`${p}/tx/`).keys(), []);
    } finally {
      await fresh.close();
    }
    await client.delete().prefix(p);
  });

  it('a look-up that missed is never remembered: a marker written after it is found by the next one', async function () {
    const p = `/dmtp-test/${nameFor(this)}`;
    log = new EtcdTxLog({ client, prefix: p });
    const writer = new EtcdTxLog({ client, prefix: p }); // another coordinator finishing under the same owner
    try {
      const early = mintXid('late');
      await writer.finishCommitted(early, 1);
      const late = mintXid('late');
      assert.deepEqual(await log.committedMarker(early), { decidedAtMs: 1 });
      assert.equal(await log.committedMarker(late), undefined);
      await writer.finishCommitted(late, 2);
      assert.deepEqual(await log.committedMarker(late), { decidedAtMs: 2 });
      // Questions asked together share one read.
      const before = log.stats.markerReads;
      const misses = await Promise.all(
        Array.from({ length: 50 }, () => log!.committedMarker(mintXid('late'))),
      );
      assert.ok(misses.every((m) => m === undefined));
      assert.equal(log.stats.markerReads - before, 1);
    } finally {
      await writer.close();
    }
    await client.delete().prefix(p);
  });
});
