import { strict as assert } from 'node:assert';
import { MemoryRegistry, MemoryStore } from '../../../registry';
import { recorder, registryContract } from '../../support/registry-contract';

// Memory registries opened with the same scope share one store, like processes sharing one etcd prefix.
const stores = new Map<string, MemoryStore>();
registryContract('MemoryRegistry', (scope) => {
  if (!stores.has(scope)) stores.set(scope, new MemoryStore());
  return new MemoryRegistry({ store: stores.get(scope) });
});

describe('MemoryRegistry', function () {
  it('loseLease() removes the instance, emits lost, then brings it back and emits reregistered', async function () {
    const store = new MemoryStore();
    const a = new MemoryRegistry({ store });
    const b = new MemoryRegistry({ store });
    try {
      const reg = await a.register({ service: 'svc', instanceId: 'i1', address: '127.0.0.1:1' });
      const seen: string[] = [];
      reg.on('lost', () => seen.push('lost')).on('reregistered', () => seen.push('reregistered'));
      const rec = recorder();
      b.watch('svc', rec.listener);
      await a.loseLease(reg);
      assert.deepEqual(seen, ['lost', 'reregistered']);
      assert.deepEqual(rec.lines(), ['add:i1@127.0.0.1:1', 'remove:i1@127.0.0.1:1', 'add:i1@127.0.0.1:1']);
      assert.deepEqual(
        (await b.instances('svc')).map((i) => i.instanceId),
        ['i1'],
      );
    } finally {
      await a.close();
      await b.close();
    }
  });
});
