import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';

// Runs first and fails loudly when the local etcd is missing or broken.
describe('smoke: etcd', function () {
  let client: Etcd3;
  before(() => {
    client = new Etcd3({ hosts: ETCD_ENDPOINTS });
  });
  after(() => client.close());

  it('deletes a key when its lease expires', async function () {
    const key = `/dmtp-test/${nameFor(this)}`;
    const lease = client.lease(2, { autoKeepAlive: false });
    await lease.put(key).value('alive');
    assert.equal(await client.get(key).string(), 'alive');
    const deadline = Date.now() + 10_000;
    while ((await client.get(key).string()) !== null) {
      assert.ok(Date.now() < deadline, `key ${key} still present 10 s after its 2 s lease was granted`);
      await new Promise((r) => setTimeout(r, 200));
    }
    await lease.revoke().catch(() => undefined); // already gone; revoking an expired lease may fail
  });
});
