/**
 * The one contract every `Registry` implementation passes (STYLE.md: one contract test per interface).
 * `makeRegistry(scope)` opens a client of the backing store: clients made with the same scope see the same
 * instances (two processes sharing one etcd prefix), different scopes never meet. The suite closes every
 * registry it opened.
 */
import { strict as assert } from 'node:assert';
import { InvalidArgumentError, FailedPreconditionError } from '../../common';
import type { ChangeEvent, Registry, ServiceInstance } from '../../registry';
import { nameFor } from './env';

export type MakeRegistry = (scope: string) => Registry | Promise<Registry>;

/** Polls `check` until it returns true; fails with `what` after `timeoutMs` (a liveness bound, not a speed test). */
export async function eventually(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Records a watch's events as compact strings, e.g. `add:i1@10.0.0.1:1`. */
export function recorder(): {
  events: ChangeEvent[];
  lines: () => string[];
  listener: (e: ChangeEvent) => void;
} {
  const events: ChangeEvent[] = [];
  return {
    events,
    lines: () => events.map((e) => `${e.type}:${e.instance.instanceId}@${e.instance.address}`),
    listener: (e) => events.push(e),
  };
}

const ids = (list: ServiceInstance[]) => list.map((i) => i.instanceId).sort();

export function registryContract(name: string, makeRegistry: MakeRegistry): void {
  describe(`Registry contract: ${name}`, function () {
    let opened: Registry[] = [];
    let scope = '';

    /** A registry client of this test's scope (closed after the test). */
    async function open(): Promise<Registry> {
      const r = await makeRegistry(scope);
      opened.push(r);
      return r;
    }

    beforeEach(function () {
      scope = nameFor(this);
    });

    afterEach(async function () {
      const toClose = opened.reverse();
      opened = [];
      for (const r of toClose) await r.close();
    });

    it('lists a registered instance, with the defaults filled in, to another client', async function () {
      const a = await open();
      const b = await open();
      const reg = await a.register({ service: 'inventory', instanceId: 'i1', address: '127.0.0.1:7001' });
      assert.equal(reg.instance.instanceId, 'i1');
      const list = await b.instances('inventory');
      assert.equal(list.length, 1);
      const [i] = list;
      assert.deepEqual(
        { ...i, startedAt: 0 },
        {
          service: 'inventory',
          instanceId: 'i1',
          address: '127.0.0.1:7001',
          version: '',
          zone: '',
          weight: 1,
          metadata: {},
          startedAt: 0,
        },
      );
      assert.equal(typeof i.startedAt, 'number');
      assert.deepEqual(b.cached('inventory'), list, 'cached() answers what instances() read');
    });

    it('keeps version, zone, weight and metadata, and generates an instance id when none is given', async function () {
      const a = await open();
      const reg = await a.register({
        service: 'payment',
        address: '127.0.0.1:7002',
        version: '1.2.3',
        zone: 'eu-1',
        weight: 3,
        metadata: { mux: '1' },
      });
      assert.ok(reg.instance.instanceId.length > 0);
      const [i] = await (await open()).instances('payment');
      assert.equal(i.instanceId, reg.instance.instanceId);
      assert.deepEqual([i.version, i.zone, i.weight, i.metadata], ['1.2.3', 'eu-1', 3, { mux: '1' }]);
    });

    it('cached() is empty until instances() or watch() started the service', async function () {
      const a = await open();
      await a.register({ service: 'svc', instanceId: 'i1', address: '127.0.0.1:1' });
      const b = await open();
      assert.deepEqual(b.cached('svc'), []);
      await b.instances('svc');
      assert.deepEqual(ids(b.cached('svc')), ['i1']);
    });

    it("lookup() finds one instance without starting the service's watch, and what the watch knows once it runs", async function () {
      const a = await open();
      await a.register({ service: 'svc', instanceId: 'i1', address: '127.0.0.1:1' });
      const b = await open();
      assert.equal((await b.lookup('svc', 'i1'))?.address, '127.0.0.1:1');
      assert.equal(await b.lookup('svc', 'nobody'), undefined);
      assert.equal(await b.lookup('other', 'i1'), undefined);
      assert.deepEqual(
        b.cached('svc'),
        [],
        'no watch started: names that come from requests leave nothing behind',
      );
      await b.instances('svc');
      assert.equal((await b.lookup('svc', 'i1'))?.instanceId, 'i1');
      await assert.rejects(b.lookup('a/b', 'i1'), InvalidArgumentError);
    });

    it('tells a watcher the known instances first, then each add, update and remove', async function () {
      const a = await open();
      const b = await open();
      const watcher = await open();
      await a.register({ service: 'svc', instanceId: 'i1', address: '127.0.0.1:1' });
      await watcher.instances('svc');
      const rec = recorder();
      const unsubscribe = watcher.watch('svc', rec.listener);
      assert.deepEqual(rec.lines(), ['add:i1@127.0.0.1:1'], 'replay of the known instance');

      const r2 = await a.register({ service: 'svc', instanceId: 'i2', address: '127.0.0.1:2' });
      await eventually('add of i2', () => rec.events.length >= 2);
      // Another client writes the same instance with new data: one 'update' carrying the previous value.
      const r2b = await b.register({ service: 'svc', instanceId: 'i2', address: '127.0.0.1:22' });
      await eventually('update of i2', () => rec.events.length >= 3);
      await r2b.deregister();
      await eventually('remove of i2', () => rec.events.length >= 4);
      assert.deepEqual(rec.lines(), [
        'add:i1@127.0.0.1:1',
        'add:i2@127.0.0.1:2',
        'update:i2@127.0.0.1:22',
        'remove:i2@127.0.0.1:22',
      ]);
      const update = rec.events[2];
      assert.equal(update.type === 'update' && update.previous.address, '127.0.0.1:2');
      assert.deepEqual(ids(watcher.cached('svc')), ['i1']);

      unsubscribe();
      await r2.deregister();
      await a.register({ service: 'svc', instanceId: 'i3', address: '127.0.0.1:3' });
      await eventually('i3 in the cache', () => ids(watcher.cached('svc')).includes('i3'));
      assert.equal(rec.events.length, 4, 'no event after unsubscribe');
    });

    it('update() changes weight and metadata in place, in call order; refuses bad changes and a deregistered one', async function () {
      const a = await open();
      const watcher = await open();
      const reg = await a.register({
        service: 'svc',
        instanceId: 'u1',
        address: '127.0.0.1:1',
        zone: 'z',
        metadata: { mux: '1' },
      });
      await watcher.instances('svc');
      const rec = recorder();
      watcher.watch('svc', rec.listener);
      // Three at once: they land in the order called, each an 'update' of the same instance.
      const [first, , last] = await Promise.all([
        reg.update({ weight: 0 }),
        reg.update({ metadata: { mux: '1', health: 'NOT_SERVING' } }),
        reg.update({ weight: 3 }),
      ]);
      assert.equal(first.weight, 0);
      assert.deepEqual([last.weight, last.metadata], [3, { mux: '1', health: 'NOT_SERVING' }]);
      assert.deepEqual(reg.instance, last);
      assert.equal(last.startedAt, first.startedAt);
      assert.equal(last.zone, 'z');
      await eventually('the last update seen', () => watcher.cached('svc')[0]?.weight === 3);
      assert.deepEqual(
        rec.events.map((e) => `${e.type}:${e.instance.weight}:${e.instance.metadata.health ?? '-'}`),
        ['add:1:-', 'update:0:-', 'update:0:NOT_SERVING', 'update:3:NOT_SERVING'],
      );
      assert.deepEqual((await (await open()).instances('svc'))[0], last, 'a fresh read');

      for (const bad of [
        { weight: -1 },
        { weight: Number.NaN },
        { metadata: { n: 1 } as unknown as Record<string, string> },
        { address: '127.0.0.1:9' } as unknown as { weight: number },
      ]) {
        await assert.rejects(reg.update(bad), (err: Error) => {
          assert.ok(err instanceof InvalidArgumentError, String(err));
          assert.match(err.message, /svc/);
          return true;
        });
      }
      assert.deepEqual(reg.instance, last, 'nothing changed');
      await reg.update({ weight: 1 }); // still usable after a refusal
      await eventually('weight 1 seen', () => watcher.cached('svc')[0]?.weight === 1);
      await reg.deregister();
      await assert.rejects(reg.update({ weight: 2 }), (err: Error) => {
        assert.ok(err instanceof FailedPreconditionError, String(err));
        assert.match(err.message, /'svc\/u1' is deregistered/);
        return true;
      });
      assert.deepEqual(await (await open()).instances('svc'), [], 'not written back');
    });

    it('a watch() started before the first read reports every instance exactly once', async function () {
      const a = await open();
      await a.register({ service: 'svc', instanceId: 'i1', address: '127.0.0.1:1' });
      await a.register({ service: 'svc', instanceId: 'i2', address: '127.0.0.1:2' });
      const b = await open();
      const rec = recorder();
      b.watch('svc', rec.listener);
      await b.instances('svc');
      await eventually('both adds', () => rec.events.length >= 2);
      assert.deepEqual(rec.lines().sort(), ['add:i1@127.0.0.1:1', 'add:i2@127.0.0.1:2']);
    });

    it('deregister() removes the instance at once, for a fresh read, and is idempotent', async function () {
      const a = await open();
      const reg = await a.register({ service: 'svc', instanceId: 'gone', address: '127.0.0.1:1' });
      assert.deepEqual(ids(await (await open()).instances('svc')), ['gone']);
      await reg.deregister();
      // A client that reads after deregister() resolved must not see it: the lease was revoked, not left to expire.
      assert.deepEqual(await (await open()).instances('svc'), []);
      await reg.deregister();
    });

    it('services() names the services with at least one instance', async function () {
      const a = await open();
      assert.deepEqual(await a.services(), []);
      await a.register({ service: 'alpha', instanceId: 'i1', address: '127.0.0.1:1' });
      const reg = await a.register({ service: 'beta', instanceId: 'i1', address: '127.0.0.1:2' });
      assert.deepEqual(await (await open()).services(), ['alpha', 'beta']);
      await reg.deregister();
      assert.deepEqual(await (await open()).services(), ['alpha']);
    });

    it('refuses invalid service names and instance ids with InvalidArgumentError', async function () {
      const a = await open();
      const bad = ['', 'x'.repeat(129), 'a/b', 'tab\there', 'nl\n', 'del\u007f'];
      for (const service of bad) {
        await assert.rejects(
          a.register({ service, address: '127.0.0.1:1' }),
          InvalidArgumentError,
          `register ${JSON.stringify(service)}`,
        );
        await assert.rejects(
          a.instances(service),
          InvalidArgumentError,
          `instances ${JSON.stringify(service)}`,
        );
        assert.throws(() => a.watch(service, () => undefined), InvalidArgumentError);
      }
      for (const instanceId of bad) {
        await assert.rejects(
          a.register({ service: 'svc', instanceId, address: '127.0.0.1:1' }),
          InvalidArgumentError,
        );
      }
      await assert.rejects(a.register({ service: 'svc', address: '' }), InvalidArgumentError);
      await assert.rejects(
        a.register({ service: 'svc', address: '127.0.0.1:1', weight: -1 }),
        InvalidArgumentError,
      );
      const ok = 'x'.repeat(128);
      await a.register({ service: ok, instanceId: ok, address: '127.0.0.1:1' });
      assert.deepEqual(ids(await a.instances(ok)), [ok], '128 characters are allowed');
      assert.deepEqual(await (await open()).services(), [ok], 'nothing invalid was written');
    });

    it('refuses to register the same instance twice in one registry', async function () {
      const a = await open();
      await a.register({ service: 'svc', instanceId: 'i1', address: '127.0.0.1:1' });
      await assert.rejects(
        a.register({ service: 'svc', instanceId: 'i1', address: '127.0.0.1:2' }),
        FailedPreconditionError,
      );
    });

    it('close() deregisters everything it registered and refuses further use', async function () {
      const a = await open();
      const observer = await open();
      await a.register({ service: 'svc', instanceId: 'i1', address: '127.0.0.1:1' });
      await a.register({ service: 'other', instanceId: 'i2', address: '127.0.0.1:2' });
      const rec = recorder();
      observer.watch('svc', rec.listener);
      await observer.instances('svc');
      await a.close();
      assert.deepEqual(await (await open()).services(), []);
      await eventually('the observer saw the remove', () => rec.events.some((e) => e.type === 'remove'));
      assert.deepEqual(rec.lines(), ['add:i1@127.0.0.1:1', 'remove:i1@127.0.0.1:1']);
      await assert.rejects(a.register({ service: 'svc', address: '127.0.0.1:1' }), FailedPreconditionError);
      await assert.rejects(a.instances('svc'), FailedPreconditionError);
      await a.close(); // idempotent
    });

    it('a subscriber that throws does not stop the others', async function () {
      const a = await open();
      const b = await open();
      await b.instances('svc');
      b.watch('svc', () => {
        throw new Error('subscriber bug');
      });
      const rec = recorder();
      b.watch('svc', rec.listener);
      await a.register({ service: 'svc', instanceId: 'i1', address: '127.0.0.1:1' });
      await eventually('the second subscriber saw the add', () => rec.events.length === 1);
      assert.deepEqual(ids(b.cached('svc')), ['i1']);
    });
  });
}
