// An etcd connection that goes silent without a reset (a frozen etcd, a network that drops packets): the
// registry talks to the shared etcd through a TCP relay in this process that stops forwarding on the
// connections it holds (test/support/tcp-relay.ts). Before, the etcd client had no HTTP/2 keepalive: its watch
// stayed quiet and its lease unrenewed for good, and nothing noticed.
import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { EtcdRegistry } from '../../../registry';
import { instanceKey } from '../../../registry/keys';
import { encodeInstance } from '../../../registry/validate';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { eventually, recorder } from '../../support/registry-contract';
import { tcpRelay, type TcpRelay } from '../../support/tcp-relay';

/** Lease TTL: the keepalive below (a ping every 500 ms, dead after 500 more) notices well within it. */
const TTL = 4;

describe('EtcdRegistry: keepalive on an etcd connection that went silent', function () {
  this.timeout(30_000);
  let link: TcpRelay;
  const opened: EtcdRegistry[] = [];
  const open = (prefix: string, hosts: string | string[], keepalive = {}) => {
    const r = new EtcdRegistry({ hosts, prefix, leaseTtlSeconds: TTL, ...keepalive });
    opened.push(r);
    return r;
  };
  const viaRelay = (prefix: string) =>
    open(prefix, `http://${link.address}`, { keepaliveMs: 500, keepaliveTimeoutMs: 500 });

  beforeEach(async () => {
    link = await tcpRelay(new URL(ETCD_ENDPOINTS[0]).host);
  });
  afterEach(async () => {
    for (const r of opened.splice(0).reverse()) await r.close();
    link.close();
  });

  it('its watch comes back over a new connection and sees what changed meanwhile', async function () {
    const prefix = `/dmtp-test/${nameFor(this)}`;
    const watcher = viaRelay(prefix);
    const direct = open(prefix, ETCD_ENDPOINTS);
    assert.deepEqual(await watcher.instances('svc'), [], 'the watch is up, through the relay');
    const before = link.connections;
    link.freeze();
    await direct.register({ service: 'svc', instanceId: 'i1', address: '127.0.0.1:1' });
    await eventually(
      'the watcher sees i1 although its connection went silent',
      () => watcher.cached('svc').some((i) => i.instanceId === 'i1'),
      10_000,
    );
    assert.ok(link.connections > before, 'the client reconnected');
  });

  it('its registration never leaves: the lease is renewed over a new connection before its TTL ends', async function () {
    const prefix = `/dmtp-test/${nameFor(this)}`;
    const member = viaRelay(prefix);
    const direct = open(prefix, ETCD_ENDPOINTS);
    const seen = recorder();
    direct.watch('svc', seen.listener);
    await member.register({ service: 'svc', instanceId: 'i1', address: '127.0.0.1:1' });
    await eventually('the watcher sees i1', () => seen.events.length > 0);
    link.freeze();
    // Two TTLs: a lease left unrenewed is gone from etcd by then (and its instance from every watcher).
    await new Promise((r) => setTimeout(r, 2 * TTL * 1000));
    assert.deepEqual(seen.lines(), ['add:i1@127.0.0.1:1'], 'i1 never left');
    assert.ok((await direct.instances('svc')).some((i) => i.instanceId === 'i1'));
  });

  it('comes back from a burst too large for one watch message (over 4 MiB) written while it was cut off', async function () {
    // 400 instances of ~16 KiB each (6.4 MiB) land while the watcher's connection is silent: resuming the watch
    // from its last revision (etcd3's own resume) would bring them in one response above grpc-js's 4 MiB limit
    // (RESOURCE_EXHAUSTED). The registry drops the watch instead, re-reads the service in pages (halving one over
    // the limit) and watches on from the read.
    const prefix = `/dmtp-test/${nameFor(this)}`;
    const watcher = viaRelay(prefix);
    assert.deepEqual(await watcher.instances('svc'), [], 'the watch is up, through the relay');
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    try {
      link.freeze();
      const pad = 'x'.repeat(16 * 1024);
      const small = {
        service: 'svc',
        address: '127.0.0.1:1',
        version: '1',
        zone: '',
        weight: 1,
        metadata: {},
        startedAt: 0,
      };
      for (let i = 0; i < 400; i += 50) {
        await Promise.all(
          Array.from({ length: 50 }, (_, k) => {
            const id = `big-${String(i + k).padStart(3, '0')}`;
            const value = encodeInstance({
              service: 'svc',
              instanceId: id,
              address: `127.0.0.1:${10_000 + i + k}`,
              version: '1',
              zone: '',
              weight: 1,
              metadata: { pad },
              startedAt: Date.now(),
            });
            return etcd
              .put(instanceKey(prefix, 'svc', id))
              .value(value)
              .exec();
          }),
        );
      }
      await eventually('the watcher holds all 400', () => watcher.cached('svc').length === 400, 20_000);
      // And it watches on: a change after the burst arrives as usual.
      await etcd
        .put(instanceKey(prefix, 'svc', 'after'))
        .value(encodeInstance({ ...small, instanceId: 'after' }))
        .exec();
      await eventually(
        'the watcher sees the next change',
        () => watcher.cached('svc').length === 401,
        10_000,
      );
    } finally {
      await etcd.delete().prefix(prefix);
      etcd.close();
    }
  });
});
