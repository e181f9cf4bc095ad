import { credentials, Client, Metadata } from '@grpc/grpc-js';
import { strict as assert } from 'node:assert';
import type { ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DmtpError } from '../../../common';
import { EtcdRegistry } from '../../../registry';
import {
  client,
  currentCall,
  RpcServer,
  setupDmtpResolver,
  type RpcClient,
  type StrategyName,
} from '../../../rpc';
import { EchoService, echoHandlers } from '../../support/echo-service';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { spawnEchoProcess, stopEchoProcess } from '../../support/rpc-echo-process';

const SERVICE = 'echo';

/** Everything a test starts, stopped in reverse order by `cleanup()`. */
class Fixture {
  readonly registry: EtcdRegistry;
  readonly servers: RpcServer[] = [];
  readonly clients: RpcClient<typeof EchoService>[] = [];
  readonly children: ChildProcess[] = [];

  constructor(readonly prefix: string) {
    this.registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix, leaseTtlSeconds: 2 });
  }

  async server(
    label: string,
    {
      mux,
      onCall,
      ...extra
    }: { weight?: number; zone?: string; mux?: boolean; onCall?: (method: string) => void } = {},
  ): Promise<RpcServer> {
    const s = new RpcServer({
      registry: this.registry,
      services: [{ name: SERVICE, definition: EchoService, handlers: echoHandlers(label, onCall) }],
      instance: { instanceId: label, ...extra },
      mux: mux ?? true,
      drainDelayMs: 200,
    });
    this.servers.push(s);
    return s.start();
  }

  client(options: Parameters<typeof client>[3] = {}): RpcClient<typeof EchoService> {
    const c = client(this.registry, SERVICE, EchoService, options);
    this.clients.push(c);
    return c;
  }

  async cleanup(): Promise<void> {
    for (const c of this.clients) await c.close();
    await Promise.all(this.children.map((c) => stopEchoProcess(c)));
    await Promise.all(this.servers.map((s) => s.stop()));
    await this.registry.close();
  }
}

/** Who answered `n` whoami calls. */
async function spread(c: RpcClient<typeof EchoService>, n: number, key?: (i: number) => string) {
  const counts: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const who = (await c.whoami(Buffer.alloc(0), { key: key?.(i) })).toString();
    counts[who] = (counts[who] ?? 0) + 1;
  }
  return counts;
}

/** Keeps `concurrency` calls in flight until `stop()`; counts answers per instance and failures. */
function load(
  c: RpcClient<typeof EchoService>,
  concurrency: number,
  opts: { idempotent?: boolean; sleepMs?: number } = {},
) {
  const byInstance: Record<string, number> = {};
  const errors: Error[] = [];
  let running = true;
  let ok = 0;
  const worker = async () => {
    while (running) {
      try {
        const r = await c.call('sleep', Buffer.from(String(opts.sleepMs ?? 2)), {
          idempotent: opts.idempotent,
        });
        byInstance[r.instanceId] = (byInstance[r.instanceId] ?? 0) + 1;
        ok++;
      } catch (err) {
        errors.push(err as Error);
      }
    }
  };
  const done = Promise.all(Array.from({ length: concurrency }, worker));
  return {
    byInstance,
    errors,
    get ok() {
      return ok;
    },
    async stop() {
      running = false;
      await done;
    },
  };
}

async function until(what: string, cond: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    assert.ok(Date.now() < end, `timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

describe('rpc client and server against etcd', function () {
  this.timeout(30_000);
  let fx: Fixture;
  beforeEach(function () {
    fx = new Fixture(`/dmtp-test/${nameFor(this)}`);
  });
  afterEach(async () => fx.cleanup());

  describe('three instances: calls spread by each strategy', () => {
    beforeEach(async () => {
      await fx.server('a', { weight: 1, zone: 'z1' });
      await fx.server('b', { weight: 1, zone: 'z2' });
      await fx.server('c', { weight: 2, zone: 'z2' });
    });

    it('round-robin: every instance the same share', async () => {
      const counts = await spread(fx.client({ strategy: 'round-robin' }), 300);
      assert.deepEqual(counts, { a: 100, b: 100, c: 100 });
    });

    for (const strategy of ['random', 'least-outstanding'] as StrategyName[]) {
      it(`${strategy}: every instance within 50% of an even share`, async () => {
        const counts = await spread(fx.client({ strategy }), 300);
        for (const l of ['a', 'b', 'c'])
          assert.ok(Math.abs((counts[l] ?? 0) - 100) < 50, JSON.stringify(counts));
      });
    }

    it('weighted: shares follow the registered weights (1:1:2)', async () => {
      const counts = await spread(fx.client({ strategy: 'weighted' }), 400);
      assert.ok(Math.abs(counts.c - 200) < 60 && Math.abs(counts.a - 100) < 50, JSON.stringify(counts));
    });

    it('consistent-hash: a key always reaches the same instance, keys spread over all', async () => {
      const c = fx.client({ strategy: 'consistent-hash' });
      const owners = new Map<string, string>();
      for (let i = 0; i < 60; i++) {
        const key = `order-${i % 20}`;
        const who = (await c.whoami(Buffer.alloc(0), { key })).toString();
        assert.equal(owners.get(key) ?? who, who, `${key} moved`);
        owners.set(key, who);
      }
      assert.equal(new Set(owners.values()).size, 3);
    });

    it('zone-preference: stays in the caller zone, falls back when it is empty', async () => {
      const near = await spread(fx.client({ strategy: 'zone-preference', zone: 'z2' }), 100);
      assert.deepEqual(Object.keys(near).sort(), ['b', 'c']);
      const far = await spread(fx.client({ strategy: 'zone-preference', zone: 'z9' }), 30);
      assert.deepEqual(Object.keys(far).sort(), ['a', 'b', 'c']);
    });
  });

  it('a fourth instance that joins under load starts receiving calls', async () => {
    await Promise.all(['a', 'b', 'c'].map((l) => fx.server(l)));
    const c = fx.client({ strategy: 'least-outstanding' });
    await c.ready();
    const l = load(c, 8);
    await sleep(200);
    await fx.server('d');
    await until('calls on d', () => (l.byInstance.d ?? 0) >= 20);
    await l.stop();
    assert.deepEqual(l.errors, []);
  });

  for (const mux of [true, false]) {
    it(`an instance stopped gracefully under load costs zero failed calls (${mux ? 'multiplexed' : 'unary'} path)`, async () => {
      const [a] = await Promise.all(['a', 'b', 'c'].map((l) => fx.server(l, { mux })));
      const c = fx.client(); // not idempotent: nothing may fail even without retries of sent calls
      await c.ready();
      const l = load(c, 8, { sleepMs: 20 });
      await sleep(300);
      await a.stop();
      await sleep(100); // answers a sent before it stopped may still be on their way to the client
      const afterStop = { ...l.byInstance };
      await sleep(300);
      await l.stop();
      assert.deepEqual(l.errors.map(String), []);
      assert.equal(l.byInstance.a, afterStop.a, 'calls reached a after it stopped');
      assert.ok(l.byInstance.b > 0 && l.byInstance.c > 0);
      assert.deepEqual(
        c
          .instances()
          .map((i) => i.instanceId)
          .sort(),
        ['b', 'c'],
      );
    });
  }

  it('with subsetSize, calls reach only the subset; a member stopped under load costs nothing and is replaced', async () => {
    const servers = await Promise.all(['s1', 's2', 's3', 's4', 's5', 's6'].map((l) => fx.server(l)));
    const c = fx.client({ subsetSize: 2, subsetKey: 'subset-test' });
    await c.ready();
    const first = c
      .instances()
      .map((i) => i.instanceId)
      .sort();
    assert.equal(first.length, 2);
    const l = load(c, 6, { sleepMs: 10 });
    await sleep(300);
    await servers.find((s) => s.registered[0].instance.instanceId === first[0])!.stop();
    await sleep(600);
    await l.stop();
    assert.deepEqual(l.errors.map(String), []);
    const now = c
      .instances()
      .map((i) => i.instanceId)
      .sort();
    assert.ok(now.includes(first[1]) && !now.includes(first[0]) && now.length === 2, now.join());
    const replacement = now.find((id) => id !== first[1])!;
    assert.ok(l.byInstance[replacement] > 0, 'the replacement takes calls');
    const reached = Object.keys(l.byInstance).sort();
    assert.deepEqual(reached, [...new Set([...first, replacement])].sort(), 'no call outside the subsets');
  });

  for (const mux of [true, false]) {
    it(`a response the client cannot decode fails INTERNAL once, is not run again, and ejects nobody (${mux ? 'multiplexed' : 'unary'} path)`, async () => {
      // Before, it read as UNAVAILABLE: an idempotent call ran at every instance, and each was counted as down.
      const runs: Record<string, number> = {};
      for (const l of ['a', 'b'])
        await fx.server(l, {
          mux,
          onCall: (m) => m === EchoService.echo.path && (runs[l] = (runs[l] ?? 0) + 1),
        });
      const Strict = {
        ...EchoService,
        echo: {
          ...EchoService.echo,
          responseDeserialize: (b: Buffer): Buffer => {
            if (b.length > 0) throw new RangeError(`index out of range: 4 + 3 > ${b.length}`);
            return b;
          },
        },
      };
      const c = client(fx.registry, SERVICE, Strict, {
        strategy: 'round-robin',
        outlierEjection: { consecutiveFailures: 1, baseEjectionMs: 60_000 },
      });
      try {
        await until('both instances in view', () => c.instances().length === 2);
        const named: string[] = [];
        for (const idempotent of [false, true]) {
          await assert.rejects(c.echo(Buffer.from('x'), { idempotent }), (err: DmtpError) => {
            assert.equal(err.name, 'InternalError');
            assert.match(err.message, /could not be decoded \(index out of range/);
            assert.equal(err.details.undecodableResponse, true);
            named.push(String(err.details.instanceId));
            return true;
          });
        }
        assert.deepEqual(named.sort(), ['a', 'b'], 'each error names the instance that answered');
        assert.deepEqual(runs, { a: 1, b: 1 }, 'each call ran once, at one instance');
        const who = new Set<string>();
        for (let i = 0; i < 4; i++) who.add((await c.whoami(Buffer.alloc(0))).toString());
        assert.deepEqual([...who].sort(), ['a', 'b'], 'neither was ejected');
      } finally {
        await c.close();
      }
    });
  }

  it('with subsetSize, a member killed with SIGKILL is stood in for by the next-ranked live instance while it is still registered', async function () {
    // Before, the subset kept the dead member (registered until its lease ends) and its share of calls went to the
    // other member only: with subsetSize 2, one instance carried the client's whole load for the lease's TTL.
    const { child } = await spawnEchoProcess({
      prefix: fx.prefix,
      service: SERVICE,
      labels: ['k1', 'k2', 'k3'],
      leaseTtlSeconds: 20, // still registered long after the kill
    });
    fx.children.push(child);
    for (const l of ['a', 'b', 'c']) await fx.server(l);
    // A key whose subset holds one instance of the child and one of this process.
    let c: RpcClient<typeof EchoService> | undefined;
    let first: string[] = [];
    for (let k = 0; !c && k < 100; k++) {
      const candidate = fx.client({ subsetSize: 2, subsetKey: `stand-in-${k}` });
      await candidate.ready();
      const ids = candidate.instances().map((i) => i.instanceId);
      if (ids.filter((id) => id.startsWith('k')).length === 1) {
        c = candidate;
        first = ids.sort();
      }
    }
    assert.ok(c, 'a key with one member in each process');
    const dead = first.find((id) => id.startsWith('k'))!;
    const alive = first.find((id) => !id.startsWith('k'))!;
    const l = load(c, 6, { idempotent: true, sleepMs: 10 });
    await until(
      'calls on both members',
      () => (l.byInstance[dead] ?? 0) > 5 && (l.byInstance[alive] ?? 0) > 5,
    );
    child.kill('SIGKILL');
    await sleep(1_500);
    await l.stop();
    assert.deepEqual(l.errors.map(String), []);
    assert.ok(
      c.instances().some((i) => i.instanceId === dead),
      'the dead member is still registered, and kept in the subset',
    );
    const standIns = Object.keys(l.byInstance).filter((id) => !first.includes(id) && !id.startsWith('k'));
    assert.ok(
      standIns.length > 0,
      `a live instance outside the subset took calls: ${JSON.stringify(l.byInstance)}`,
    );
  });

  it('an instance killed with SIGKILL under load: idempotent calls all succeed and it leaves the view within the lease TTL', async function () {
    const { child } = await spawnEchoProcess({
      prefix: fx.prefix,
      service: SERVICE,
      labels: ['k'],
      leaseTtlSeconds: 2,
    });
    fx.children.push(child);
    await fx.server('a');
    await fx.server('b');
    const c = fx.client();
    await until('three instances in view', () => c.instances().length === 3);
    const l = load(c, 8, { idempotent: true, sleepMs: 20 });
    await until('calls on k', () => (l.byInstance.k ?? 0) >= 10);
    const killedAt = Date.now();
    child.kill('SIGKILL');
    await until('k out of the view', () => !c.instances().some((i) => i.instanceId === 'k'), 6_000);
    const goneAfterMs = Date.now() - killedAt;
    await sleep(200);
    await l.stop();
    assert.deepEqual(l.errors.map(String), []);
    assert.ok(goneAfterMs <= 2_000 + 1_500, `k left the view ${goneAfterMs} ms after the kill (TTL 2 s)`);
    assert.ok(l.byInstance.a > 0 && l.byInstance.b > 0);
  });

  describe('bad input', () => {
    it('a call whose deadline already passed fails with DEADLINE_EXCEEDED', async () => {
      await fx.server('a');
      const c = fx.client();
      await assert.rejects(c.whoami(Buffer.alloc(0), { deadline: Date.now() - 1 }), {
        name: 'DeadlineExceededError',
        code: 4,
      });
      await assert.rejects(c.sleep(Buffer.from('2000'), { timeoutMs: 50 }), { code: 4 });
    });

    it('a call to a service with no instances fails fast with UNAVAILABLE naming the service', async () => {
      const c = client(fx.registry, 'nobody-home', EchoService, { timeoutMs: 10_000 });
      const started = Date.now();
      await assert.rejects(c.whoami(Buffer.alloc(0)), (err: Error & { code: number }) => {
        assert.equal(err.code, 14);
        assert.match(err.message, /nobody-home/);
        return true;
      });
      assert.ok(Date.now() - started < 5_000, 'waited for the deadline instead of failing fast');
      await c.close();
    });
  });

  it('a nested call inherits the remaining deadline of the call being served', async () => {
    await fx.server('leaf');
    const inner = fx.client();
    let seen = 0;
    const outer = new RpcServer({
      registry: fx.registry,
      services: [
        {
          name: 'front',
          definition: { whoami: EchoService.whoami },
          handlers: {
            whoami: async () => {
              seen = currentCall()!.deadline;
              return (await inner.call('sleep', Buffer.from('1000'))).response;
            },
          },
        },
      ],
    });
    fx.servers.push(outer);
    await outer.start();
    const front = client(fx.registry, 'front', { whoami: EchoService.whoami });
    const started = Date.now();
    await assert.rejects(front.whoami(Buffer.alloc(0), { timeoutMs: 300 }), { code: 4 });
    await front.close();
    assert.ok(seen > started && seen <= started + 400, 'the handler saw the caller deadline');
    assert.ok(Date.now() - started < 900, 'the nested call did not run to its own 10 s default');
  });

  it('a nested call is cancelled when the call being served is cancelled', async () => {
    // Before, only the deadline was inherited: a caller that gave up left the onward calls running to it.
    await fx.server('leaf');
    const inner = fx.client();
    let nested: Promise<unknown> | undefined;
    const outer = new RpcServer({
      registry: fx.registry,
      services: [
        {
          name: 'front2',
          definition: { whoami: EchoService.whoami },
          handlers: {
            whoami: async () => {
              const p = inner.call('sleep', Buffer.from('5000'));
              nested = p;
              return (await p).response;
            },
          },
        },
      ],
    });
    fx.servers.push(outer);
    await outer.start();
    const front = client(fx.registry, 'front2', { whoami: EchoService.whoami });
    const gone = new AbortController();
    const call = front.whoami(Buffer.alloc(0), { timeoutMs: 20_000, signal: gone.signal });
    while (!nested) await new Promise((r) => setTimeout(r, 10));
    gone.abort();
    await assert.rejects(call, { code: 1 });
    await front.close();
    await assert.rejects(nested, { code: 1 }, 'the onward call was cancelled, not left to sleep 5 s');
  });

  /** Who answers a Whoami over a plain grpc-js client. */
  const whoami = (plain: Client) =>
    new Promise<string>((resolve, reject) =>
      plain.makeUnaryRequest(
        EchoService.whoami.path,
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.alloc(0),
        new Metadata(),
        { deadline: Date.now() + 5_000 },
        (err, v) => (err ? reject(err) : resolve(v!.toString())),
      ),
    );

  it('dmtp:/// resolves through the registry for a plain grpc-js client', async () => {
    await Promise.all(['a', 'b', 'c'].map((l) => fx.server(l)));
    const remove = setupDmtpResolver(fx.registry);
    const plain = new Client(`dmtp:///${SERVICE}`, credentials.createInsecure());
    try {
      const seen = new Set<string>();
      for (let i = 0; i < 30; i++) {
        seen.add(await whoami(plain));
      }
      assert.deepEqual([...seen].sort(), ['a', 'b', 'c']);
    } finally {
      plain.close();
      remove();
    }
  });

  it('dmtp:/// leaves out an instance registered with an address that is not host:port: calls reach the others', async () => {
    // Before, that one endpoint held every call of the channel waiting for a pick until its deadline.
    await Promise.all(['a', 'b'].map((l) => fx.server(l)));
    const junk = await fx.registry.register({
      service: SERVICE,
      instanceId: 'junk',
      address: 'not-an-address',
    });
    const remove = setupDmtpResolver(fx.registry);
    const plain = new Client(`dmtp:///${SERVICE}`, credentials.createInsecure());
    try {
      assert.equal((await fx.registry.instances(SERVICE)).length, 3, 'junk is in the view');
      const seen = new Set<string>();
      for (let i = 0; i < 10; i++) {
        seen.add(await whoami(plain));
      }
      assert.deepEqual([...seen].sort(), ['a', 'b']);
    } finally {
      plain.close();
      remove();
      await junk.deregister();
    }
  });
});
