import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { InvalidArgumentError, UnavailableError } from '../../../common';
import { EtcdRegistry, encodeInstance, MAX_VALUE_BYTES, type EtcdRegistration } from '../../../registry';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { eventually, recorder, registryContract } from '../../support/registry-contract';

// Short leases keep the tests fast; each scope (test) gets its own prefix on the shared etcd.
const TTL = 2;
const prefixOf = (scope: string) => `/dmtp-test/${scope}`;

registryContract(
  'EtcdRegistry',
  (scope) => new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix: prefixOf(scope), leaseTtlSeconds: TTL }),
);

/** Captures the JSON log lines written to stderr while `fn` runs. */
async function captureLog<T>(
  fn: () => Promise<T>,
): Promise<{ result: T; lines: Array<Record<string, unknown>> }> {
  const lines: Array<Record<string, unknown>> = [];
  const original = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    try {
      lines.push(JSON.parse(chunk.toString()));
    } catch {
      // not one of ours
    }
    return (original as (...a: unknown[]) => boolean)(chunk, ...rest);
  }) as typeof process.stderr.write;
  try {
    return { result: await fn(), lines };
  } finally {
    process.stderr.write = original;
  }
}

describe('EtcdRegistry on the shared etcd', function () {
  let raw: Etcd3;
  let prefix = '';
  const opened: EtcdRegistry[] = [];
  const open = () => {
    const r = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix, leaseTtlSeconds: TTL });
    opened.push(r);
    return r;
  };

  beforeEach(function () {
    raw = new Etcd3({ hosts: ETCD_ENDPOINTS });
  });

  afterEach(async function () {
    for (const r of opened.splice(0).reverse()) await r.close();
    if (prefix) await raw.delete().prefix(`${prefix}/`);
    raw.close();
  });

  it('stores the documented key and JSON value, on a lease', async function () {
    prefix = prefixOf(nameFor(this));
    const reg = (await open().register({
      service: 'svc',
      instanceId: 'i1',
      address: '127.0.0.1:1',
      zone: 'z',
    })) as EtcdRegistration;
    const res = await raw.get(`${prefix}/services/svc/i1`).exec();
    assert.equal(res.kvs.length, 1);
    assert.deepEqual(JSON.parse(res.kvs[0].value.toString()), {
      address: '127.0.0.1:1',
      version: '',
      zone: 'z',
      weight: 1,
      metadata: {},
      startedAt: reg.instance.startedAt,
    });
    assert.equal(res.kvs[0].lease, reg.leaseId);
    assert.notEqual(reg.leaseId, '0');
  });

  it('reads a service and the service list in pages, all at one revision', async function () {
    // Before, one range read took the whole prefix: past ~12,000 registrations of a service (4 MiB, grpc-js's
    // limit on a response) discovery could not start, nor resync after a compacted watch.
    prefix = prefixOf(nameFor(this));
    const writer = open();
    for (let i = 0; i < 25; i++) {
      await writer.register({
        service: 'big',
        instanceId: `i${String(i).padStart(2, '0')}`,
        address: `127.0.0.1:${1000 + i}`,
      });
    }
    await writer.register({ service: 'small', instanceId: 'only', address: '127.0.0.1:2000' });
    assert.throws(() => new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix, readPageKeys: 0 }), /readPageKeys/);
    const reader = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix, readPageKeys: 4 });
    opened.push(reader);
    const seen = await reader.instances('big');
    assert.deepEqual(
      seen.map((x) => x.instanceId),
      Array.from({ length: 25 }, (_, i) => `i${String(i).padStart(2, '0')}`),
    );
    assert.deepEqual(await reader.services(), ['big', 'small']);
    // The watch starts after the revision read: a change right after is seen, none is missed.
    await writer.register({ service: 'big', instanceId: 'i99', address: '127.0.0.1:1099' });
    await eventually('the instance registered after the read', () => reader.cached('big').length === 26);
  });

  it('skips foreign and malformed values under the prefix with one warning per key', async function () {
    prefix = prefixOf(nameFor(this));
    await raw.put(`${prefix}/services/svc/bad`).value('not json');
    await raw.put(`${prefix}/services/svc/nested/deeper`).value('{}');
    await raw.put(`${prefix}/services/svc/noaddr`).value('{"startedAt":1}');
    const { lines } = await captureLog(async () => {
      const writer = open();
      await writer.register({ service: 'svc', instanceId: 'good', address: '127.0.0.1:1' });
      const reader = open();
      const rec = recorder();
      reader.watch('svc', rec.listener);
      assert.deepEqual(
        (await reader.instances('svc')).map((i) => i.instanceId),
        ['good'],
      );
      assert.deepEqual(await reader.services(), ['svc']);
      // The same bad key written again, and a valid key turned bad: the watch goes on.
      await raw.put(`${prefix}/services/svc/bad`).value('still not json');
      await raw.put(`${prefix}/services/svc/good`).value('[]');
      await eventually('good removed once its value turned bad', () => reader.cached('svc').length === 0);
      await writer.register({ service: 'svc', instanceId: 'later', address: '127.0.0.1:2' });
      await eventually('later added', () => reader.cached('svc').length === 1);
      assert.deepEqual(rec.lines(), [
        'add:good@127.0.0.1:1',
        'remove:good@127.0.0.1:1',
        'add:later@127.0.0.1:2',
      ]);
    });
    const warned = lines
      .filter((l) => l.ns === 'registry:etcd' && l.level === 'warn')
      .map((l) => String(l.key));
    assert.deepEqual(warned.sort(), [
      `${prefix}/services/svc/bad`,
      `${prefix}/services/svc/good`,
      `${prefix}/services/svc/nested/deeper`,
      `${prefix}/services/svc/noaddr`,
    ]);
  });

  it('refuses a registration over MAX_VALUE_BYTES with InvalidArgumentError, writes nothing, and goes on', async function () {
    // Before, any size went to etcd: 100 KiB was stored (a few such values made the service unreadable), 2 MiB
    // was refused by etcd as a retriable UnavailableError that opened etcd3's circuit breaker, so the next,
    // valid register() on the same registry failed too.
    prefix = prefixOf(nameFor(this));
    const r = open();
    for (const size of [100 * 1024, 2 * 1024 * 1024]) {
      const instanceId = `big-${size}`;
      await assert.rejects(
        r.register({
          service: 'svc',
          instanceId,
          address: '127.0.0.1:1',
          metadata: { blob: 'x'.repeat(size) },
        }),
        (e: unknown) => {
          assert.ok(e instanceof InvalidArgumentError, String(e));
          assert.match(e.message, new RegExp(`'svc/${instanceId}'.*limit is ${MAX_VALUE_BYTES}`));
          assert.equal(e.details.instanceId, instanceId);
          assert.ok(Number(e.details.bytes) > size);
          return true;
        },
      );
    }
    assert.equal((await raw.getAll().prefix(`${prefix}/`).keys()).length, 0, 'nothing was written');
    await r.register({ service: 'svc', instanceId: 'after', address: '127.0.0.1:2' });
    assert.deepEqual(
      (await r.instances('svc')).map((i) => i.instanceId),
      ['after'],
    );
  });

  it('skips a value over MAX_VALUE_BYTES that someone else wrote, warning with its key and size', async function () {
    // An older version or a foreign writer may have stored one: discovery serves the instances beside it.
    prefix = prefixOf(nameFor(this));
    const sizes = { big1: 200 * 1024, big2: 1_200_000 };
    for (const [id, size] of Object.entries(sizes)) {
      const value = JSON.stringify({
        address: '127.0.0.1:9',
        startedAt: 1,
        metadata: { blob: 'y'.repeat(size) },
      });
      await raw.put(`${prefix}/services/svc/${id}`).value(value);
    }
    const { lines } = await captureLog(async () => {
      await open().register({ service: 'svc', instanceId: 'small', address: '127.0.0.1:1' });
      const reader = open();
      assert.deepEqual(
        (await reader.instances('svc')).map((i) => i.instanceId),
        ['small'],
      );
      assert.equal(await open().lookup('svc', 'big1'), undefined);
    });
    const warned = lines.filter((l) => l.ns === 'registry:etcd' && l.level === 'warn');
    for (const [id, size] of Object.entries(sizes)) {
      const w = warned.find((l) => l.key === `${prefix}/services/svc/${id}`);
      assert.ok(w, `a warning names ${id}`);
      assert.ok(Number(w.bytes) > size, `and its size: ${JSON.stringify(w)}`);
    }
  });

  it("reads a service whose page passes grpc-js's 4 MiB in smaller pages, and its client stays usable", async function () {
    // 80 valid values of ~60 KiB (under MAX_VALUE_BYTES): one page of 1,000 keys is ~4.8 MiB. Before, grpc-js
    // refused that response, etcd3 sent the read three more times and opened its circuit breaker: discovery of
    // the service failed for everyone, and every other call of the client failed for the next 5 s.
    prefix = prefixOf(nameFor(this));
    const ids = Array.from({ length: 80 }, (_, i) => `i${String(i).padStart(2, '0')}`);
    for (const [n, instanceId] of ids.entries()) {
      const value = encodeInstance({
        service: 'wide',
        instanceId,
        address: `127.0.0.1:${1000 + n}`,
        version: '',
        zone: '',
        weight: 1,
        metadata: { blob: 'z'.repeat(60 * 1024) },
        startedAt: Date.now(),
      });
      assert.ok(Buffer.byteLength(value) <= MAX_VALUE_BYTES);
      await raw.put(`${prefix}/services/wide/${instanceId}`).value(value);
    }
    const reader = open();
    assert.equal(reader.config.readPageKeys, 1_000);
    assert.deepEqual(
      (await reader.instances('wide')).map((i) => i.instanceId),
      ids,
    );
    assert.deepEqual(await reader.services(), ['wide']);
    const reg = await reader.register({ service: 'other', instanceId: 'next', address: '127.0.0.1:2' });
    assert.equal(reg.instance.instanceId, 'next');
    // The watch that follows the paged read goes on as usual.
    await raw.delete().key(`${prefix}/services/wide/i00`);
    await eventually('i00 removed', () => reader.cached('wide').length === 79);
  });

  /** svc/i1 registered, an observer watching svc (recorded), and the registration's 'lost'/'reregistered'. */
  const watchedRegistration = async () => {
    const reg = (await open().register({
      service: 'svc',
      instanceId: 'i1',
      address: '127.0.0.1:1',
    })) as EtcdRegistration;
    const observer = open();
    const rec = recorder();
    observer.watch('svc', rec.listener);
    await observer.instances('svc');
    const seen: string[] = [];
    reg.on('lost', () => seen.push('lost')).on('reregistered', () => seen.push('reregistered'));
    return { reg, observer, rec, seen };
  };

  it('registers again by itself when its lease is revoked behind its back', async function () {
    prefix = prefixOf(nameFor(this));
    const { reg, observer, rec, seen } = await watchedRegistration();
    const oldLease = reg.leaseId!;

    await raw.leaseClient.leaseRevoke({ ID: oldLease });
    await eventually("'lost' then 'reregistered'", () => seen.length === 2);
    assert.deepEqual(seen, ['lost', 'reregistered']);
    assert.notEqual(reg.leaseId, oldLease);
    const res = await raw.get(`${prefix}/services/svc/i1`).exec();
    assert.equal(res.kvs[0]?.lease, reg.leaseId, 'the key is back, on the new lease');
    await eventually('the observer sees it again', () => observer.cached('svc').length === 1);
    assert.deepEqual(rec.lines(), ['add:i1@127.0.0.1:1', 'remove:i1@127.0.0.1:1', 'add:i1@127.0.0.1:1']);
  });

  it('puts its key back under the same lease when someone deletes it, and not after deregister()', async function () {
    // Before, a key deleted behind its back (`etcdctl del`) while the lease lived stayed deleted: the instance
    // was gone from discovery for good while the registration said 'live' and emitted nothing.
    prefix = prefixOf(nameFor(this));
    const key = `${prefix}/services/svc/i1`;
    const { reg, observer, rec, seen } = await watchedRegistration();
    const lease = reg.leaseId!;
    const onLease = async () => (await raw.get(key).exec()).kvs[0]?.lease === lease;

    for (let i = 0; i < 2; i++) {
      // Twice: a key put back is watched on, and put back again.
      const del = await raw.delete().key(key).exec();
      assert.equal(del.deleted, '1');
      await eventually(`the key is back on the same lease (deletion ${i + 1})`, onLease);
    }
    assert.equal(reg.state, 'live');
    assert.equal(reg.leaseId, lease);
    assert.deepEqual(seen, [], 'the lease was never lost');
    await eventually('the observer sees it again', () => observer.cached('svc').length === 1);
    assert.deepEqual(rec.lines().slice(0, 3), [
      'add:i1@127.0.0.1:1',
      'remove:i1@127.0.0.1:1',
      'add:i1@127.0.0.1:1',
    ]);

    await reg.deregister();
    await eventually('the observer sees it leave', () => observer.cached('svc').length === 0);
    // Its own deregistration (the revoke deleted the key) is not undone: a put-back would follow the delete
    // event at once; a marker written after it, and seen by the observer's watch, bounds the wait.
    await open().register({ service: 'svc', instanceId: 'marker', address: '127.0.0.1:2' });
    await eventually('the marker is seen', () => observer.cached('svc').length === 1);
    assert.equal((await raw.get(key).exec()).kvs.length, 0, 'the deregistered key stays deleted');
    assert.deepEqual(
      observer.cached('svc').map((i) => i.instanceId),
      ['marker'],
    );
  });

  it('an update keeps through a lost lease and a deleted key: each later write of the key holds it', async function () {
    prefix = prefixOf(nameFor(this));
    const key = `${prefix}/services/svc/i1`;
    const { reg, observer, seen } = await watchedRegistration();
    const stored = async () => {
      const kv = (await raw.get(key).exec()).kvs[0];
      return kv && { weight: JSON.parse(kv.value.toString()).weight as number, lease: kv.lease };
    };
    // Updated right after its lease went: the put under the dead lease fails, the re-registration writes it.
    const oldLease = reg.leaseId!;
    await raw.leaseClient.leaseRevoke({ ID: oldLease });
    assert.equal((await reg.update({ weight: 0 })).weight, 0);
    await eventually("'reregistered'", () => seen.includes('reregistered'));
    await eventually('weight 0 on the new lease', async () => {
      const now = await stored();
      return now?.weight === 0 && now.lease !== oldLease && now.lease === reg.leaseId;
    });
    // Deleted behind its back: put back as updated.
    await reg.update({ weight: 5 });
    await raw.delete().key(key).exec();
    await eventually('put back with weight 5', async () => (await stored())?.weight === 5);
    await eventually('the observer has weight 5', () => observer.cached('svc')[0]?.weight === 5);
    assert.equal(reg.instance.weight, 5);
  });

  it('fails fast with UnavailableError naming the service when etcd cannot be reached, and closes cleanly', async function () {
    prefix = prefixOf(nameFor(this));
    // Nothing listens on this port: the registry must answer with an error, not hang or crash.
    const r = new EtcdRegistry({
      hosts: 'http://127.0.0.1:23899',
      prefix,
      leaseTtlSeconds: TTL,
      callTimeoutMs: 2_000,
    });
    opened.push(r);
    await assert.rejects(r.register({ service: 'svc', address: '127.0.0.1:1' }), (e: unknown) => {
      assert.ok(e instanceof UnavailableError);
      assert.match(e.message, /'svc\//);
      return true;
    });
    await assert.rejects(r.instances('svc'), (e: unknown) => {
      assert.ok(e instanceof UnavailableError);
      assert.match(e.message, /'svc'/);
      return true;
    });
    await assert.rejects(r.services(), UnavailableError);
    assert.deepEqual(r.cached('svc'), []);
  });
});
