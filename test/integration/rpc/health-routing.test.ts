/**
 * Health routing on real servers and a real etcd registry: a service the application reports NOT_SERVING (its
 * own name, or "" for the whole server) leaves the registry — DMTP clients stop sending it calls — and comes back
 * once SERVING again; `healthRouting: false` keeps it registered; a stop meanwhile leaves nothing registered.
 */
import { strict as assert } from 'node:assert';
import { EtcdRegistry } from '../../../registry';
import { client, type RpcClient } from '../../../rpc/client';
import { RpcServer } from '../../../rpc/server';
import { EchoService, echoHandlers } from '../../support/echo-service';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';

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

  async function server(label: string, extra: { healthRouting?: boolean; admin?: boolean } = {}) {
    const s = new RpcServer({
      registry,
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
      instance: { instanceId: label },
      drainDelayMs: 0,
      healthRouting: extra.healthRouting,
    });
    servers.push(s);
    return s.start();
  }

  /** The instance ids registered for `service`, read from etcd (no cache). */
  async function registered(service = SERVICE): Promise<string[]> {
    const fresh = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    try {
      return (await fresh.instances(service)).map((i) => i.instanceId).sort();
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

  it('a service reported NOT_SERVING leaves the registry and comes back once SERVING again', async () => {
    const a = await server('a');
    await server('b');
    const c = client(registry, SERVICE, EchoService, { strategy: 'round-robin' });
    clients.push(c);
    assert.deepEqual(await answers(c, 6), ['a', 'b']);

    a.health.set(SERVICE, 'NOT_SERVING'); // e.g. its database is down
    await until("the client's view drops a", async () => registry.cached(SERVICE).length === 1);
    assert.deepEqual(await registered(), ['b']);
    assert.deepEqual(await answers(c, 6), ['b']);

    a.health.set(SERVICE, 'SERVING');
    await until("the client's view has a again", async () => registry.cached(SERVICE).length === 2);
    assert.deepEqual(await registered(), ['a', 'b']);
    assert.deepEqual(await answers(c, 6), ['a', 'b']);
  });

  it('"" NOT_SERVING withdraws every name; flapping ends as the last status says; stop leaves nothing', async () => {
    const a = await server('a', { admin: true });
    assert.deepEqual([await registered(), await registered(`${SERVICE}-admin`)], [['a'], ['a']]);
    a.health.set('', 'NOT_SERVING');
    await until(
      'both names left',
      async () => (await registered()).length === 0 && (await registered(`${SERVICE}-admin`)).length === 0,
    );
    for (let i = 0; i < 5; i++) {
      a.health.set('', 'SERVING');
      a.health.set('', 'NOT_SERVING');
    }
    a.health.set('', 'SERVING');
    a.health.set(`${SERVICE}-admin`, 'NOT_SERVING');
    await until('the service back, the admin name not', async () => (await registered()).length === 1);
    await new Promise((r) => setTimeout(r, 300)); // no late registration from an earlier reconciliation
    assert.deepEqual([await registered(), await registered(`${SERVICE}-admin`)], [['a'], []]);

    a.health.set(`${SERVICE}-admin`, 'SERVING');
    await a.stop(); // racing the re-registration that SERVING started
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual([await registered(), await registered(`${SERVICE}-admin`)], [[], []]);
  });

  it('with healthRouting: false a NOT_SERVING service stays registered', async () => {
    const a = await server('a', { healthRouting: false });
    a.health.set(SERVICE, 'NOT_SERVING');
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(await registered(), ['a']);
  });
});
