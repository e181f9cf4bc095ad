import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { mintXid } from '../../../common';
import { EtcdTxLog } from '../../../coordinator/log/etcd-log';
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
});
