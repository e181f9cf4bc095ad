import { strict as assert } from 'node:assert';
import { NotFoundError } from '../../../common';
import { EtcdRegistry } from '../../../registry';
import { client, RpcMetrics, RpcServer, type MetricsServer, type RpcClient } from '../../../rpc';
import { waitFor } from '../../support/coordinator-wait';
import { EchoService, echoHandlers } from '../../support/echo-service';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { labelValues, samplesAt, value, XID_LIKE, type Sample } from './scrape';

const SERVICE = 'echo';
const WHOAMI = '/dmtp.test.Echo/WhoAmI';
const SLEEP = '/dmtp.test.Echo/Sleep';

describe('rpc metrics on /metrics after real calls', function () {
  this.timeout(20_000);
  let registry: EtcdRegistry;
  let metrics: RpcMetrics;
  let endpoint: MetricsServer;
  let servers: RpcServer[];
  let echo: RpcClient<typeof EchoService>;
  let untrack: () => void;

  beforeEach(async function () {
    registry = new EtcdRegistry({
      hosts: ETCD_ENDPOINTS,
      prefix: `/dmtp-test/${nameFor(this)}`,
      leaseTtlSeconds: 2,
    });
    metrics = new RpcMetrics();
    // 'a' serves the multiplexed path, 'b' plain unary: the same middleware times both.
    servers = await Promise.all(
      (['a', 'b'] as const).map((label) =>
        new RpcServer({
          registry,
          services: [
            {
              name: SERVICE,
              definition: EchoService,
              handlers: {
                ...echoHandlers(label),
                sleep: () => {
                  throw new NotFoundError('nothing to sleep on');
                },
              },
            },
          ],
          instance: { instanceId: `inst-${label}` },
          middleware: [metrics.serverMiddleware],
          mux: label === 'a',
          drainDelayMs: 0,
        }).start(),
      ),
    );
    untrack = metrics.trackRegistry(registry, [SERVICE, 'nobody']);
    echo = client(registry, SERVICE, EchoService, { middleware: [metrics.clientMiddleware] });
    endpoint = await metrics.serve(0);
  });
  afterEach(async () => {
    untrack();
    await echo.close();
    await endpoint.close();
    await Promise.all(servers.map((s) => s.stop()));
    await registry.close();
  });

  const scrapeUntil = async (what: string, ok: (s: Sample[]) => boolean): Promise<Sample[]> => {
    let last: Sample[] = [];
    await waitFor(what, async () => ok((last = await samplesAt(endpoint.address))));
    return last;
  };

  it('times every call per service, method and status on both ends and both transports', async () => {
    await scrapeUntil(
      'both instances seen',
      (s) => value(s, 'dmtp_registry_instances', { service: SERVICE }) === 2,
    );
    const answered = new Set<string>();
    for (let i = 0; i < 10; i++) answered.add((await echo.whoami(Buffer.from(''))).toString());
    assert.deepEqual([...answered].sort(), ['a', 'b'], 'round robin reached the mux and the unary instance');
    for (let i = 0; i < 3; i++) await assert.rejects(echo.sleep(Buffer.from('1')), /nothing to sleep on/);

    const s = await samplesAt(endpoint.address);
    const client = (method: string, code: string) =>
      value(s, 'dmtp_rpc_client_duration_seconds_count', { service: SERVICE, method, code });
    const server = (method: string, code: string) =>
      value(s, 'dmtp_rpc_server_duration_seconds_count', { method, code });
    assert.equal(client(WHOAMI, 'OK'), 10);
    assert.equal(client(SLEEP, 'NOT_FOUND'), 3);
    assert.equal(server(WHOAMI, 'OK'), 10);
    assert.equal(server(SLEEP, 'NOT_FOUND'), 3);
    assert.ok(value(s, 'dmtp_rpc_client_duration_seconds_sum', { method: WHOAMI }) > 0);
    assert.equal(value(s, 'dmtp_rpc_client_duration_seconds_bucket', { method: WHOAMI, le: '+Inf' }), 10);

    const values = labelValues(s);
    for (const v of values) assert.ok(!XID_LIKE.test(v), `label value '${v}' looks like an xid`);
    assert.ok(!values.some((v) => v.startsWith('inst-')), 'no instance id as a label value');
    assert.ok(!values.some((v) => v.includes(':') && !v.startsWith('/')), 'no address as a label value');
  });

  it('follows the registry: instances per service and change events', async () => {
    await scrapeUntil(
      'both instances seen',
      (s) => value(s, 'dmtp_registry_instances', { service: SERVICE }) === 2,
    );
    await servers[1].stop();
    const s = await scrapeUntil(
      'one instance left',
      (x) => value(x, 'dmtp_registry_instances', { service: SERVICE }) === 1,
    );
    assert.equal(value(s, 'dmtp_registry_changes_total', { service: SERVICE, type: 'add' }), 2);
    assert.equal(value(s, 'dmtp_registry_changes_total', { service: SERVICE, type: 'remove' }), 1);
    assert.equal(value(s, 'dmtp_registry_instances', { service: 'nobody' }), 0);
    assert.equal(
      s.filter((x) => x.name === 'dmtp_registry_instances').length,
      2,
      'one series per tracked service',
    );
  });

  it('bounds the method label: past maxMethods, new methods count as other', async () => {
    const small = new RpcMetrics({ maxMethods: 1 });
    const next = async () => ({ response: Buffer.alloc(0), trailers: undefined as never, instanceId: 'x' });
    const call = (method: string) => ({
      service: SERVICE,
      method,
      request: Buffer.alloc(0),
      metadata: undefined as never,
      deadline: Date.now() + 1_000,
      idempotent: false,
    });
    for (const m of ['/a.S/One', '/a.S/Two', '/a.S/Three']) await small.clientMiddleware(call(m), next);
    const text = await small.registry.metrics();
    assert.match(text, /method="\/a\.S\/One"/);
    assert.match(text, /dmtp_rpc_client_duration_seconds_count\{service="echo",method="other",code="OK"\} 2/);
    assert.doesNotMatch(text, /\/a\.S\/Two/);
  });
});
