/**
 * HA coordinators in the test's own process, on the shared etcd under a prefix of the running test, with fake
 * participants: `const ha = inProcessHa()` inside a `describe` registers the hooks (a fresh prefix per test; every
 * coordinator started is stopped, and the prefix deleted, after it).
 */
import { Etcd3 } from 'etcd3';
import { Coordinator } from '../../coordinator/coordinator';
import { FakeGateway } from './coordinator-fake-gateway';
import { ETCD_ENDPOINTS, nameFor } from './env';

export interface InProcessHa {
  readonly prefix: string;
  readonly etcd: Etcd3;
  /** Starts coordinator `id` (lease TTL 2 s, a scan every 100 ms) and stops it after the test. */
  start(id: string, gateway?: FakeGateway, retireAfterMs?: number): Promise<Coordinator>;
}

export function inProcessHa(): InProcessHa {
  let prefix = '';
  let etcd: Etcd3 | undefined;
  const started: Coordinator[] = [];
  beforeEach(function () {
    prefix = `/dmtp-test/${nameFor(this)}`;
    etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
  });
  afterEach(async () => {
    for (const c of started.splice(0).reverse()) await c.stop().catch(() => undefined);
    await etcd?.delete().prefix(prefix);
    etcd?.close();
  });
  return {
    get prefix() {
      return prefix;
    },
    get etcd() {
      return etcd!;
    },
    async start(id, gateway = new FakeGateway(), retireAfterMs) {
      const c = new Coordinator({
        id,
        etcd: { prefix, endpoints: ETCD_ENDPOINTS },
        gateway,
        ha: { leaseTtlSeconds: 2, scanIntervalMs: 100, retireAfterMs },
      });
      started.push(c);
      await c.start();
      return c;
    },
  };
}
