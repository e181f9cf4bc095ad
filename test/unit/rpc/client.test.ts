import { experimental, Metadata } from '@grpc/grpc-js';
import { strict as assert } from 'node:assert';
import { UnavailableError, type DmtpError } from '../../../common/errors';
import { MemoryRegistry, MemoryStore, type ServiceInstance } from '../../../registry';
import {
  answeredByServer,
  client,
  errorTrailers,
  setupDmtpResolver,
  type ClientOptions,
  type StrategyName,
} from '../../../rpc';
import { EchoService } from '../../support/echo-service';
import { FakeTransport } from '../../support/fake-transport';

const notSent = (address: string) =>
  new UnavailableError('No connection established', { details: { address, notSent: true } });
const dropped = (address: string) => new UnavailableError('Connection dropped', { details: { address } });

/** The ids of the instances a client may call now, sorted. */
const instanceIds = (c: { instances(): ServiceInstance[] }) =>
  c
    .instances()
    .map((i) => i.instanceId)
    .sort();

describe('rpc client (memory registry, fake transports)', () => {
  let registry: MemoryRegistry;
  let transports: Map<string, FakeTransport>;
  const factory = (i: ServiceInstance) => {
    const t = new FakeTransport(i.metadata.mux === '1' ? 'mux' : 'unary', i.address, i.instanceId);
    transports.set(i.instanceId, t);
    return t;
  };

  beforeEach(async () => {
    registry = new MemoryRegistry({ store: new MemoryStore() });
    transports = new Map();
    for (const [id, port] of [
      ['a', 1],
      ['b', 2],
      ['c', 3],
    ] as const) {
      await registry.register({ service: 'echo', instanceId: id, address: `127.0.0.1:${port}` });
    }
  });
  afterEach(() => registry.close());

  it('refuses a NaN timeout or deadline instead of calling with no deadline at all', async () => {
    // Before, NaN passed every deadline check: on the mux path the call waited as long as its handler.
    const c = client(registry, 'echo', EchoService, { transportFactory: factory });
    for (const options of [{ timeoutMs: Number.NaN }, { deadline: Number.NaN }]) {
      await assert.rejects(c.call('whoami', Buffer.alloc(0), options), { code: 3, message: /is NaN/ });
    }
    assert.equal(
      [...transports.values()].reduce((n, t) => n + t.calls, 0),
      0,
      'nothing was sent',
    );
    await c.close();
    assert.throws(() => client(registry, 'echo', EchoService, { timeoutMs: Number.NaN }), { code: 3 });
  });

  it('refuses a client option that would silently lift its limit (NaN, Infinity, negative), naming it', async () => {
    // Before, `maxAttempts: NaN` retried until the deadline and a NaN retry budget never ran out: NaN compares
    // false with every limit.
    const bad: [string, ClientOptions][] = [
      ['timeoutMs', { timeoutMs: -1 }],
      ['maxAttempts', { maxAttempts: Number.NaN }],
      ['maxAttempts', { maxAttempts: 0 }],
      ['maxAttempts', { maxAttempts: Infinity }],
      ['maxAttempts', { maxAttempts: 2.5 }],
      ['retryBudget.ratio', { retryBudget: { ratio: Number.NaN } }],
      ['retryBudget.ratio', { retryBudget: { ratio: -0.1 } }],
      ['retryBudget.capacity', { retryBudget: { capacity: Infinity } }],
      ['retryBackoff.initialMs', { retryBackoff: { initialMs: Number.NaN } }],
      ['retryBackoff.multiplier', { retryBackoff: { multiplier: -2 } }],
      ['outlierEjection.consecutiveFailures', { outlierEjection: { consecutiveFailures: Number.NaN } }],
      ['outlierEjection.baseEjectionMs', { outlierEjection: { baseEjectionMs: Number.NaN } }],
      ['outlierEjection.maxEjectionMs', { outlierEjection: { maxEjectionMs: -1 } }],
    ];
    const accepted: string[] = [];
    for (const [option, options] of bad) {
      let made;
      try {
        made = client(registry, 'echo', EchoService, { transportFactory: factory, ...options });
      } catch (e) {
        const err = e as DmtpError;
        assert.equal(err.name, 'InvalidArgumentError');
        assert.equal(err.code, 3);
        assert.equal(err.details.option, option);
        assert.ok(err.message.startsWith(`client of echo: ${option} must be `), err.message);
        assert.match(err.message, /, got (NaN|-?[\d.]+|Infinity)$/);
        continue;
      }
      accepted.push(
        `${option}: ${JSON.stringify(options, (_, v: unknown) => (typeof v === 'number' ? String(v) : v))}`,
      );
      await made.close();
    }
    assert.deepEqual(accepted, [], 'every one refused');
    assert.equal(transports.size, 0, 'a refused client opened nothing');
  });

  it('takes an option given as undefined, or a partial backoff, as the default; an Infinite timeout as none', async () => {
    const c = client(registry, 'echo', EchoService, {
      transportFactory: factory,
      timeoutMs: undefined,
      maxAttempts: undefined,
      retryBackoff: { initialMs: 1 },
      retryBudget: { ratio: undefined },
    });
    await c.ready();
    transports.get('a')!.fail = () => notSent('a');
    transports.get('b')!.fail = () => notSent('b');
    assert.equal((await c.whoami(Buffer.alloc(0))).toString(), 'c', 'retried with the default limits');
    await c.close();
    const unbounded = client(registry, 'echo', EchoService, {
      transportFactory: factory,
      timeoutMs: Infinity,
    });
    assert.ok(
      ['a', 'b', 'c'].includes((await unbounded.whoami(Buffer.alloc(0))).toString()),
      'Infinity: no deadline',
    );
    await unbounded.close();
  });

  it('retries a call that never reached a server on another instance', async () => {
    const c = client(registry, 'echo', EchoService, { transportFactory: factory });
    await c.ready();
    transports.get('a')!.fail = () => notSent('a');
    for (let i = 0; i < 9; i++) assert.notEqual((await c.call('whoami', Buffer.alloc(0))).instanceId, 'a');
    await c.close();
  });

  it('does not retry a failure in transit unless the call is idempotent', async () => {
    const c = client(registry, 'echo', EchoService, { transportFactory: factory, strategy: 'round-robin' });
    await c.ready();
    for (const t of transports.values()) t.fail = () => dropped(t.address);
    transports.get('c')!.fail = undefined;
    await assert.rejects(c.whoami(Buffer.alloc(0)), { code: 14 }); // a or b: not retried
    assert.equal((await c.whoami(Buffer.alloc(0), { idempotent: true })).toString(), 'c'); // retried until it reaches c
    await c.close();
  });

  it('stops retrying when the budget is spent', async () => {
    const c = client(registry, 'echo', EchoService, {
      transportFactory: factory,
      retryBudget: { capacity: 2, ratio: 0 },
      maxAttempts: 3,
      outlierEjection: { consecutiveFailures: 1000 },
    });
    await c.ready();
    for (const t of transports.values()) t.fail = () => notSent(t.address);
    await assert.rejects(c.whoami(Buffer.alloc(0)), { code: 14 }); // 3 attempts, 2 tokens spent
    const before = [...transports.values()].reduce((n, t) => n + t.calls, 0);
    await assert.rejects(c.whoami(Buffer.alloc(0)), { code: 14 }); // no token left: one attempt
    assert.equal([...transports.values()].reduce((n, t) => n + t.calls, 0) - before, 1);
    await c.close();
  });

  it('ejects an instance after consecutive transport failures', async () => {
    const c = client(registry, 'echo', EchoService, {
      transportFactory: factory,
      outlierEjection: { consecutiveFailures: 2, baseEjectionMs: 60_000 },
    });
    await c.ready();
    transports.get('b')!.fail = () => notSent('b');
    for (let i = 0; i < 12; i++) await c.whoami(Buffer.alloc(0));
    assert.equal(transports.get('b')!.calls, 2);
    await c.close();
  });

  it("does not eject an instance for an UNAVAILABLE it answered itself (passing on its onward call's failure)", async () => {
    const c = client(registry, 'echo', EchoService, {
      transportFactory: factory,
      strategy: 'round-robin',
      outlierEjection: { consecutiveFailures: 2, baseEjectionMs: 60_000 },
    });
    await c.ready();
    const answered = () =>
      new UnavailableError('inventory is unavailable', { details: { address: 'b', answered: true } });
    transports.get('b')!.fail = answered;
    for (let i = 0; i < 12; i++) await c.whoami(Buffer.alloc(0)).catch(() => undefined);
    assert.equal(transports.get('b')!.calls, 4, 'still asked its share: alive, it answers');
    await c.close();
  });

  it('fails a response it cannot decode with INTERNAL at once: not retried, the instance not ejected', async () => {
    // Before, the decoder's exception read as UNAVAILABLE: an idempotent call ran again at every instance, and
    // the instances that had answered were counted toward ejection.
    const Strict = {
      ...EchoService,
      echo: {
        ...EchoService.echo,
        responseDeserialize: (): Buffer => {
          throw new RangeError('index out of range: 4 + 3 > 4');
        },
      },
    };
    const c = client(registry, 'echo', Strict, {
      transportFactory: factory,
      strategy: 'round-robin',
      outlierEjection: { consecutiveFailures: 1, baseEjectionMs: 60_000 },
    });
    await c.ready();
    const err = await c.echo(Buffer.from('x'), { idempotent: true }).then(
      () => assert.fail('decoded'),
      (e: DmtpError) => e,
    );
    assert.equal(err.name, 'InternalError');
    assert.equal(err.code, 13);
    assert.match(err.message, /could not be decoded \(index out of range/);
    const calls = [...transports.values()].reduce((n, t) => n + t.calls, 0);
    assert.equal(calls, 1, 'asked one instance, once');
    const [asked] = [...transports.entries()].find(([, t]) => t.calls === 1)!;
    assert.deepEqual(
      { ...err.details },
      {
        service: 'echo',
        method: EchoService.echo.path,
        instanceId: asked,
        address: transports.get(asked)!.address,
        undecodableResponse: true,
      },
    );
    assert.equal(
      answeredByServer(err),
      false,
      'ran to success there: reads as "may have run", not as undone',
    );
    assert.ok(errorTrailers(err) instanceof Metadata, "the answer's trailers are kept");
    const who = new Set<string>();
    for (let i = 0; i < 6; i++) who.add((await c.whoami(Buffer.alloc(0))).toString());
    assert.deepEqual([...who].sort(), ['a', 'b', 'c'], 'none ejected');
    await c.close();
  });

  it('follows the registry: new instances get a transport from the factory, removed ones are closed', async () => {
    const c = client(registry, 'echo', EchoService, { transportFactory: factory });
    await c.ready();
    const d = await registry.register({
      service: 'echo',
      instanceId: 'd',
      address: '127.0.0.1:4',
      metadata: { mux: '1' },
    });
    assert.equal(transports.get('d')?.kind, 'mux');
    assert.equal(transports.get('a')?.kind, 'unary');
    await d.deregister();
    assert.equal(transports.get('d')!.closed, true);
    assert.deepEqual(
      c
        .instances()
        .map((i) => i.instanceId)
        .sort(),
      ['a', 'b', 'c'],
    );
    await c.close();
    assert.ok([...transports.values()].every((t) => t.closed));
  });

  it('sends nothing to an instance registered with weight 0, whatever the strategy, until its weight is raised', async () => {
    // Before, only the weighted strategy (and the dmtp:/// resolver, and the initiator's coordinator pick) left
    // a weight-0 instance out: round robin, the default, gave it a third of the calls.
    const store = new MemoryStore();
    const reg = new MemoryRegistry({ store });
    try {
      const spec = (id: string, port: number, weight: number) =>
        ({ service: 'echo', instanceId: id, address: `127.0.0.1:${port}`, weight }) as const;
      await reg.register(spec('a', 1, 1));
      await reg.register(spec('b', 2, 0));
      await reg.register(spec('c', 3, 2));
      const strategies: StrategyName[] = [
        'round-robin',
        'random',
        'least-outstanding',
        'consistent-hash',
        'zone-preference',
      ];
      for (const strategy of strategies) {
        const c = client(reg, 'echo', EchoService, { transportFactory: factory, strategy });
        await c.ready();
        const seen = new Set<string>();
        for (let i = 0; i < 30; i++)
          seen.add((await c.call('whoami', Buffer.alloc(0), { key: `k${i}` })).instanceId);
        assert.deepEqual([...seen].sort(), ['a', 'c'], strategy);
        assert.deepEqual(
          c
            .instances()
            .map((i) => i.instanceId)
            .sort(),
          ['a', 'c'],
          strategy,
        );
        await c.close();
      }
      const c = client(reg, 'echo', EchoService, { transportFactory: factory });
      await c.ready();
      // Weights changed in place (an operator's put, a registration written again): followed both ways.
      const [a, b, cc] = await reg
        .instances('echo')
        .then((l) => l.sort((x, y) => x.instanceId.localeCompare(y.instanceId)));
      store.put({ ...a, weight: 0 });
      store.put({ ...cc, weight: 0 });
      await assert.rejects(c.whoami(Buffer.alloc(0)), (err: DmtpError) => {
        assert.equal(err.code, 14);
        assert.equal(
          err.message,
          "no live instance of service 'echo' (3 registered with weight 0 take no calls)",
        );
        assert.equal(err.details.notSent, true);
        return true;
      });
      store.put({ ...b, weight: 1 });
      assert.equal((await c.whoami(Buffer.alloc(0))).toString(), 'b');
      await c.close();
    } finally {
      await reg.close();
    }
  });

  it('with subsetSize, an ejected member is stood in for by the next-ranked instance until its ejection ends', async () => {
    // Before, the subset kept the ejected member and nothing else: its share of calls fell on the others (with
    // every member out, on the ejected ones), while the service's other instances stood idle.
    const store = new MemoryStore();
    const reg = new MemoryRegistry({ store });
    try {
      for (let i = 0; i < 8; i++)
        await reg.register({ service: 'echo', instanceId: `s${i}`, address: `127.0.0.1:${200 + i}` });
      const c = client(reg, 'echo', EchoService, {
        transportFactory: factory,
        subsetSize: 2,
        subsetKey: 'k2',
        outlierEjection: { consecutiveFailures: 2, baseEjectionMs: 300 },
      });
      await c.ready();
      const subset = () => instanceIds(c);
      const first = subset();
      assert.equal(first.length, 2);
      const [bad, good] = first;
      transports.get(bad)!.fail = () => notSent(bad);
      const seen = new Set<string>();
      for (let i = 0; i < 20; i++) seen.add((await c.whoami(Buffer.alloc(0))).toString()); // retried elsewhere
      const during = subset();
      assert.equal(during.length, 3, `the ejected member kept, one more in: ${during.join()}`);
      assert.ok(during.includes(bad) && during.includes(good), during.join());
      const standIn = during.find((id) => !first.includes(id))!;
      assert.ok(seen.has(standIn) && seen.has(good), `calls reached ${[...seen].join()}`);
      assert.equal(transports.get(bad)!.calls, 2, 'ejected after two failures, then not called');

      transports.get(bad)!.fail = undefined; // back
      await new Promise((r) => setTimeout(r, 400)); // the ejection (300 ms) ends
      assert.deepEqual(subset(), first, 'the stand-in leaves once the member is back');
      assert.equal(transports.get(standIn)!.closed, true);
      await c.close();
    } finally {
      await reg.close();
    }
  });

  it('with subsetSize, connects to and calls its subset only, follows changes by one member, skips weight 0', async () => {
    const store = new MemoryStore();
    const reg = new MemoryRegistry({ store });
    try {
      const regs = new Map<string, Awaited<ReturnType<MemoryRegistry['register']>>>();
      for (let i = 0; i < 12; i++) {
        const id = `s${String(i).padStart(2, '0')}`;
        regs.set(
          id,
          await reg.register({ service: 'echo', instanceId: id, address: `127.0.0.1:${100 + i}` }),
        );
      }
      const c = client(reg, 'echo', EchoService, {
        transportFactory: factory,
        subsetSize: 3,
        subsetKey: 'k1',
      });
      await c.ready();
      const subset = () => instanceIds(c);
      const first = subset();
      assert.equal(first.length, 3);
      assert.deepEqual([...transports.keys()].sort(), first, 'transports for the subset only');
      const seen = new Set<string>();
      for (let i = 0; i < 12; i++) seen.add((await c.whoami(Buffer.alloc(0))).toString());
      assert.deepEqual([...seen].sort(), first);
      // Another client with the same key: the same subset.
      const twin = client(reg, 'echo', EchoService, {
        subsetSize: 3,
        subsetKey: 'k1',
        transportFactory: (i) => new FakeTransport('unary', i.address, i.instanceId), // not in `transports`
      });
      await twin.ready();
      assert.deepEqual(
        twin
          .instances()
          .map((i) => i.instanceId)
          .sort(),
        first,
      );
      await twin.close();

      // A member leaves: one new member in its place, the other two (and their transports) kept.
      const [gone, ...kept] = first;
      const keptTransports = kept.map((id) => transports.get(id)!);
      await regs.get(gone)!.deregister();
      const second = subset();
      assert.equal(second.length, 3);
      assert.ok(kept.every((id) => second.includes(id)) && !second.includes(gone), second.join());
      assert.ok(keptTransports.every((t, i) => transports.get(kept[i]) === t && !t.closed));
      assert.equal(transports.get(gone)!.closed, true);
      // A member parked at weight 0 is replaced as if it had left; back at weight 1, it is chosen again.
      const parked = second.find((id) => !first.includes(id))!;
      await regs.get(parked)!.update({ weight: 0 });
      assert.ok(!subset().includes(parked));
      await regs.get(parked)!.update({ weight: 1 });
      assert.deepEqual(subset(), second);

      // Every instance parked: the call fails at once and says why.
      for (const r of regs.values()) if (r.instance.instanceId !== gone) await r.update({ weight: 0 });
      await assert.rejects(c.whoami(Buffer.alloc(0)), {
        code: 14,
        message: "no live instance of service 'echo' (11 registered with weight 0 take no calls)",
      });
      await c.close();
      assert.throws(() => client(reg, 'echo', EchoService, { subsetSize: 0 }), {
        code: 3,
        message: /subsetSize/,
      });
      assert.throws(() => client(reg, 'echo', EchoService, { subsetSize: 2.5 }), { code: 3 });
      assert.throws(() => client(reg, 'echo', EchoService, { subsetSize: 2, subsetKey: '' }), { code: 3 });
    } finally {
      await reg.close();
    }
  });

  it('runs client middleware around every call, with the call it may change', async () => {
    const seen: string[] = [];
    const c = client(registry, 'echo', EchoService, {
      transportFactory: factory,
      strategy: 'consistent-hash',
      middleware: [
        async (call, next) => {
          seen.push(call.method);
          return next({ ...call, key: 'fixed' });
        },
      ],
    });
    const a = await c.call('whoami', Buffer.alloc(0));
    const b = await c.call('whoami', Buffer.alloc(0));
    assert.equal(a.instanceId, b.instanceId);
    assert.deepEqual(seen, [EchoService.whoami.path, EchoService.whoami.path]);
    await c.close();
  });
  it('reads the registry again on the next call after its first read failed', async () => {
    failFirstRead(registry);
    const c = client(registry, 'echo', EchoService, { transportFactory: factory });
    await assert.rejects(c.whoami(Buffer.alloc(0)), /registry unavailable for service 'echo'/);
    assert.ok(['a', 'b', 'c'].includes((await c.whoami(Buffer.alloc(0))).toString()), 'not broken for good');
    await c.close();
  });

  it('a call without a deadline waits for a slow first registry read instead of failing at once', async () => {
    const read = registry.instances.bind(registry);
    registry.instances = async (service: string) => {
      await new Promise((r) => setTimeout(r, 50));
      return read(service);
    };
    const c = client(registry, 'echo', EchoService, { transportFactory: factory });
    const got = await c.whoami(Buffer.alloc(0), { deadline: Infinity });
    assert.ok(['a', 'b', 'c'].includes(got.toString()));
    await c.close();
  });

  it('the dmtp:/// resolver reports a failed registry read and reads again when the channel asks', async () => {
    failFirstRead(registry);
    const remove = setupDmtpResolver(registry, 'resolver-retry');
    const reports: string[] = [];
    const listener = ((endpoints: { ok: boolean; error?: { details: string }; value?: unknown[] }) => {
      reports.push(endpoints.ok ? `ok ${endpoints.value!.length}` : `error ${endpoints.error!.details}`);
      return true;
    }) as unknown as experimental.ResolverListener;
    const resolver = experimental.createResolver(
      { scheme: 'dmtp', authority: 'resolver-retry', path: 'echo' },
      listener,
      {},
    );
    try {
      resolver.updateResolution();
      await waitUntil(() => reports.length === 1);
      assert.match(reports[0], /^error registry read of 'echo' failed: etcd is down/);
      resolver.updateResolution(); // what the channel does after its backoff
      await waitUntil(() => reports.length === 2);
      assert.equal(reports[1], 'ok 3');
    } finally {
      resolver.destroy();
      remove();
    }
  });

  it('the dmtp:/// resolver leaves out an instance whose address is not host:port, and says so once', async () => {
    // Before, each became an endpoint grpc-js could not connect to, and every call of the channel waited for a
    // pick until its deadline, whichever instance it would have gone to.
    const garbage = ['not-an-address', 'host:99999', 'http://10.0.0.1:80', '[::1'];
    for (const service of ['echo', 'junk'])
      for (const [i, address] of garbage.entries())
        await registry.register({ service, instanceId: `bad${i}`, address });
    const v6 = await registry.register({ service: 'echo', instanceId: 'v6', address: '[::1]:4' });
    await registry.register({ service: 'junk', instanceId: 'parked', address: '127.0.0.1:9', weight: 0 });
    const remove = setupDmtpResolver(registry, 'resolver-garbage');
    const reports: Record<string, string[]> = { echo: [], junk: [] };
    const resolvers = ['echo', 'junk'].map((service) =>
      experimental.createResolver(
        { scheme: 'dmtp', authority: 'resolver-garbage', path: service },
        ((endpoints: { ok: boolean; error?: { details: string }; value?: experimental.Endpoint[] }) => {
          const hostPorts = endpoints.value?.map((e) => {
            const a = e.addresses[0] as { host: string; port: number };
            return `${a.host}:${a.port}`;
          });
          reports[service].push(
            endpoints.ok ? hostPorts!.sort().join(' ') : `error ${endpoints.error!.details}`,
          );
          return true;
        }) as unknown as experimental.ResolverListener,
        {},
      ),
    );
    const warned = captureWarnings();
    try {
      for (const r of resolvers) r.updateResolution();
      await waitUntil(() => reports.echo.length === 1 && reports.junk.length === 1);
      assert.equal(reports.echo[0], '127.0.0.1:1 127.0.0.1:2 127.0.0.1:3 ::1:4');
      assert.equal(
        reports.junk[0],
        "error no live instance of service 'junk' (1 registered with weight 0 take no calls; 4 left out: address " +
          'not host:port)',
      );
      await v6.deregister(); // the view changes: the garbage is left out again, and not logged again
      await waitUntil(() => reports.echo.length === 2);
      assert.equal(reports.echo[1], '127.0.0.1:1 127.0.0.1:2 127.0.0.1:3');
    } finally {
      warned.restore();
      for (const r of resolvers) r.destroy();
      remove();
    }
    assert.deepEqual(
      warned.lines
        .filter((l) => l.ns === 'rpc:resolver')
        .map((l) => `${String(l.service)} ${String(l.instanceId)} ${String(l.address)}`)
        .sort(),
      ['echo', 'junk'].flatMap((service) => garbage.map((a, i) => `${service} bad${i} ${a}`)).sort(),
      'one warning per instance left out, naming it',
    );
  });
});

/** Collects the JSON log lines written to stderr until `restore()`. */
function captureWarnings(): { lines: Record<string, unknown>[]; restore(): void } {
  const lines: Record<string, unknown>[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    try {
      lines.push(JSON.parse(String(chunk)) as Record<string, unknown>);
      return true;
    } catch {
      return (write as (...a: unknown[]) => boolean)(chunk, ...rest);
    }
  }) as typeof process.stderr.write;
  return { lines, restore: () => (process.stderr.write = write) };
}

async function waitUntil(pred: () => boolean, ms = 2_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The registry's next read of instances fails as an unreachable etcd would; later ones work. */
function failFirstRead(registry: MemoryRegistry): void {
  const read = registry.instances.bind(registry);
  let failures = 1;
  registry.instances = async (service: string) => {
    if (failures-- > 0) throw new UnavailableError('etcd is down');
    return read(service);
  };
}
