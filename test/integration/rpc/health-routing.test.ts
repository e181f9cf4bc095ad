/**
 * Health routing on real servers and a real etcd registry: a service the application reports NOT_SERVING (its
 * own name, or "" for the whole server) is registered with weight 0 and `health: NOT_SERVING` — still listed,
 * but DMTP clients stop sending it calls — and with what it registered once SERVING again; `healthRouting: false`
 * leaves the registration alone; a stop meanwhile leaves nothing registered; an update etcd refuses (reached
 * through a TCP relay that refuses connections) is tried again until it lands.
 */
import { strict as assert } from 'node:assert';
import { EtcdRegistry } from '../../../registry';
import { client, type RpcClient } from '../../../rpc/client';
import { RpcServer } from '../../../rpc/server';
import { EchoService, echoHandlers } from '../../support/echo-service';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { tcpRelay } from '../../support/tcp-relay';

const SERVICE = 'routed';

describe('rpc server: health routing through the registry', function () {
  this.timeout(20_000);
  let prefix: string;
  let registry: EtcdRegistry;
  let servers: RpcServer[];
  let clients: RpcClient<typeof EchoService>[];

  beforeEach(function () {
    prefix = `/dmtp-test/${nameFor(this)}`;
    registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    servers = [];
    clients = [];
  });
  afterEach(async () => {
    for (const c of clients) await c.close();
    for (const s of servers) await s.stop();
    await registry.close();
  });

  async function server(
    label: string,
    extra: {
      healthRouting?: boolean;
      admin?: boolean;
      weight?: number;
      metadata?: Record<string, string>;
      registry?: EtcdRegistry;
    } = {},
  ) {
    const s = new RpcServer({
      registry: extra.registry ?? registry,
      services: [
        { name: SERVICE, definition: EchoService, handlers: echoHandlers(label) },
        ...(extra.admin
          ? [
              {
                name: `${SERVICE}-admin`,
                definition: { echo: { ...EchoService.echo, path: '/t.Admin/Echo' } },
                handlers: { echo: (c: { request: Buffer }) => c.request },
              },
            ]
          : []),
      ],
      instance: { instanceId: label, weight: extra.weight, metadata: extra.metadata },
      drainDelayMs: 0,
      healthRouting: extra.healthRouting,
    });
    servers.push(s);
    return s.start();
  }

  /** The instances registered for `service`, read from etcd (no cache): `<id>:<weight>[:<metadata.health>]`. */
  async function registered(service = SERVICE): Promise<string[]> {
    const fresh = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    try {
      return (await fresh.instances(service))
        .map((i) => `${i.instanceId}:${i.weight}${i.metadata.health ? `:${i.metadata.health}` : ''}`)
        .sort();
    } finally {
      await fresh.close();
    }
  }

  async function until(what: string, ok: () => Promise<boolean>): Promise<void> {
    for (let i = 0; i < 200; i++) {
      if (await ok()) return;
      await new Promise((r) => setTimeout(r, 25));
    }
    assert.fail(`timed out waiting until ${what}`);
  }

  async function answers(c: RpcClient<typeof EchoService>, n: number): Promise<string[]> {
    const out = new Set<string>();
    for (let i = 0; i < n; i++) out.add((await c.whoami(Buffer.alloc(0))).toString());
    return [...out].sort();
  }

  it('a service reported NOT_SERVING takes no calls while listed, and takes them again once SERVING', async () => {
    const a = await server('a', { weight: 2, metadata: { team: 'stock' } });
    const b = await server('b');
    const c = client(registry, SERVICE, EchoService, { strategy: 'round-robin' });
    clients.push(c);
    assert.deepEqual(await answers(c, 6), ['a', 'b']);

    a.health.set(SERVICE, 'NOT_SERVING'); // e.g. its database is down
    await until("the client's calls leave a", async () => c.instances().length === 1);
    assert.deepEqual(await registered(), ['a:0:NOT_SERVING', 'b:1'], 'still listed');
    assert.deepEqual(await answers(c, 6), ['b']);

    a.health.set(SERVICE, 'SERVING');
    await until("the client's calls reach a again", async () => c.instances().length === 2);
    assert.deepEqual(await registered(), ['a:2', 'b:1']);
    const back = (await registry.instances(SERVICE)).find((i) => i.instanceId === 'a')!;
    assert.deepEqual(back.metadata, { team: 'stock', mux: '1' }, 'its own metadata, without the mark');
    assert.deepEqual(await answers(c, 6), ['a', 'b']);

    // Every instance parked: the call fails at once, saying why.
    a.health.set(SERVICE, 'NOT_SERVING');
    b.health.set('', 'NOT_SERVING');
    await until('no instance takes calls', async () => c.instances().length === 0);
    await assert.rejects(c.whoami(Buffer.alloc(0)), {
      code: 14,
      message: "no live instance of service 'routed' (2 registered with weight 0 take no calls)",
    });
  });

  it('"" NOT_SERVING parks every name; flapping ends as the last status says; stop leaves nothing', async () => {
    const a = await server('a', { admin: true });
    const both = async () => [await registered(), await registered(`${SERVICE}-admin`)];
    assert.deepEqual(await both(), [['a:1'], ['a:1']]);
    a.health.set('', 'NOT_SERVING');
    await until('both names parked', async () => (await both()).flat().every((r) => r === 'a:0:NOT_SERVING'));
    for (let i = 0; i < 5; i++) {
      a.health.set('', 'SERVING');
      a.health.set('', 'NOT_SERVING');
    }
    a.health.set('', 'SERVING');
    a.health.set(`${SERVICE}-admin`, 'NOT_SERVING');
    await until('the service back, the admin name not', async () => (await registered())[0] === 'a:1');
    await new Promise((r) => setTimeout(r, 300)); // no late update from an earlier reconciliation
    assert.deepEqual(await both(), [['a:1'], ['a:0:NOT_SERVING']]);

    a.health.set(`${SERVICE}-admin`, 'SERVING');
    await a.stop(); // racing the update that SERVING started
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(await both(), [[], []]);
  });

  it("what the application set by hand survives a park: its metadata and weight, and a drain's weight 0", async () => {
    const a = await server('a');
    const reg = a.registered[0];
    const flap = async (want: string) => {
      a.health.set(SERVICE, 'NOT_SERVING');
      await until('parked', async () => (await registered())[0].endsWith(':0:NOT_SERVING'));
      a.health.set(SERVICE, 'SERVING');
      await until(`back as ${want}`, async () => (await registered())[0] === want);
    };
    await reg.update({ weight: 3, metadata: { ...reg.instance.metadata, canary: 'yes' } });
    await flap('a:3');
    assert.deepEqual(reg.instance.metadata, { mux: '1', canary: 'yes' });
    await reg.update({ weight: 0 }); // drained by hand
    await flap('a:0');
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(await registered(), ['a:0'], 'still drained: health routing does not undo it');
  });

  it("refuses an instance that sets metadata.health itself: health routing's own key, which it would overwrite", async () => {
    // Before, the application's value was dropped at the first reconciliation (or, as NOT_SERVING, read as
    // parked and its weight given back).
    await assert.rejects(server('a', { metadata: { health: 'green', rack: 'r1' } }), {
      code: 3,
      message:
        /instance\.metadata\.health is health routing's own .* use another key, or healthRouting: false/,
    });
    assert.deepEqual(await registered(), [], 'nothing registered');
    const b = await server('b', { metadata: { health: 'green' }, healthRouting: false });
    assert.equal(b.registered[0].instance.metadata.health, 'green', 'without health routing the key is free');
  });

  it('with healthRouting: false a NOT_SERVING service stays registered as it was', async () => {
    const a = await server('a', { healthRouting: false });
    a.health.set(SERVICE, 'NOT_SERVING');
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(await registered(), ['a:1']);
  });

  it('an update refused while etcd is unreachable is tried again until it lands', async function () {
    this.timeout(40_000); // etcd3's breaker may hold the first retries after the outage
    const link = await tcpRelay(new URL(ETCD_ENDPOINTS[0]).host);
    const viaRelay = new EtcdRegistry({
      hosts: `http://${link.address}`,
      prefix,
      leaseTtlSeconds: 20, // outlives the outage: what lands is the update, not a re-registration
      callTimeoutMs: 1_000,
    });
    try {
      const a = await server('a', { registry: viaRelay });
      link.refuse(true);
      link.cut();
      a.health.set(SERVICE, 'NOT_SERVING');
      await new Promise((r) => setTimeout(r, 2_500)); // the first attempt failed, a retry is due
      assert.deepEqual(await registered(), ['a:1'], 'nothing written while etcd is unreachable');
      link.refuse(false);
      for (let i = 0; (await registered())[0] !== 'a:0:NOT_SERVING'; i++) {
        if (i > 60) assert.fail(`not parked 15 s after etcd came back: ${(await registered()).join()}`);
        await new Promise((r) => setTimeout(r, 250));
      }
      // Back with the weight it had before the failed attempts (they left weight 0 in the registration).
      a.health.set(SERVICE, 'SERVING');
      await until('back with weight 1', async () => (await registered())[0] === 'a:1');
      await a.stop();
    } finally {
      await viaRelay.close();
      link.close();
    }
  });
});
