import { strict as assert } from 'node:assert';
import { GRPCResourceExhastedError, GRPCUnavailableError, type Etcd3, type IRangeRequest } from 'etcd3';
import { ResourceExhaustedError } from '../../../common';
import { readPrefix, type PageLimit } from '../../../registry';

/**
 * An etcd KV of `sizes.length` keys under /p/ (value i is `sizes[i]` bytes) whose responses are refused, as
 * grpc-js refuses them, when their values add up to more than `maxResponseBytes`. Records every request.
 */
function fakeEtcd(sizes: number[], maxResponseBytes: number) {
  const keys = sizes.map((_, i) => `/p/k${String(i).padStart(3, '0')}`);
  const requests: IRangeRequest[] = [];
  const range = async (req: IRangeRequest) => {
    requests.push(req);
    const from = Buffer.from(req.key as Buffer).toString();
    const matching = keys.filter((k) => k >= from).map((k) => keys.indexOf(k));
    const page = req.limit ? matching.slice(0, Number(req.limit)) : matching;
    const bytes = req.keys_only ? 0 : page.reduce((sum, i) => sum + sizes[i], 0);
    if (bytes > maxResponseBytes) {
      throw new GRPCResourceExhastedError(
        `RESOURCE_EXHAUSTED: Received message larger than max (${bytes} vs ${maxResponseBytes})`,
      );
    }
    return {
      header: { revision: '7' },
      more: page.length < matching.length,
      kvs: page.map((i) => ({
        key: Buffer.from(keys[i]),
        value: Buffer.alloc(req.keys_only ? 0 : sizes[i]),
      })),
    };
  };
  return { client: { kv: { range } } as unknown as Etcd3, requests, keys };
}

describe('registry: readPrefix with pages over the client limit', function () {
  it('reads a page the client refuses again with half the keys, and the rest of the prefix at that size', async function () {
    // 10 values of 30 bytes and a limit of 100 bytes per response: 3 keys per page fit, 8 and 4 do not.
    const etcd = fakeEtcd(Array(10).fill(30), 100);
    const page: PageLimit = { keys: 8 };
    const res = await readPrefix(etcd.client, '/p/', page);
    assert.deepEqual(
      res.kvs.map((kv) => kv.key.toString()),
      etcd.keys,
    );
    assert.equal(res.revision, '7');
    assert.equal(page.keys, 2, 'halved from 8 to 4 to 2, and kept');
    assert.equal(res.pageKeys, 2);
    assert.deepEqual(
      etcd.requests.map((r) => Number(r.limit)),
      [8, 4, 2, 2, 2, 2, 2],
    );
    // Every page after the first one is read at the first page's revision.
    assert.deepEqual(
      etcd.requests.slice(3).map((r) => r.revision),
      ['7', '7', '7', '7'],
    );

    etcd.requests.length = 0;
    await readPrefix(etcd.client, '/p/', page);
    assert.equal(etcd.requests[0].limit, 2, 'the next read starts at the size that worked');
  });

  it('fails with ResourceExhaustedError naming the key when one value alone is over the limit', async function () {
    const etcd = fakeEtcd([10, 10, 500, 10], 100);
    await assert.rejects(readPrefix(etcd.client, '/p/', 4), (e: unknown) => {
      assert.ok(e instanceof ResourceExhaustedError, String(e));
      assert.match(e.message, /'\/p\/k002'/);
      assert.equal(e.details.key, '/p/k002');
      assert.ok(e.cause instanceof GRPCResourceExhastedError);
      return true;
    });
  });

  it('passes any other failure on at once, without shrinking the page', async function () {
    const page: PageLimit = { keys: 50 };
    const client = {
      kv: {
        range: async () => {
          throw new GRPCUnavailableError('UNAVAILABLE: no connection');
        },
      },
    } as unknown as Etcd3;
    await assert.rejects(readPrefix(client, '/p/', page), GRPCUnavailableError);
    assert.equal(page.keys, 50);
  });
});
