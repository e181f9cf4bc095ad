/**
 * What every example service reads from its environment, and the two chores each one does the same way: say
 * it is ready (one JSON line on stdout, which examples/demo.ts waits for) and stop cleanly on SIGTERM/SIGINT.
 *
 *   ETCD_ENDPOINTS      etcd, comma-separated (default http://127.0.0.1:23790, scripts/services.sh's)
 *   DMTP_PREFIX         registry key prefix shared by the shop and its coordinator (default /dmtp)
 *   KAFKA_BROKERS       comma-separated (default 127.0.0.1:19092)
 *   DATABASE_URL        the service's own PostgreSQL database (inventory, payment, shipping, loyalty)
 *   INSTANCE_ID         this instance's registry id; keep it across restarts (participants recover by it)
 *   PORT                listen port (default 0 = any free port)
 *   METRICS_PORT        serve Prometheus metrics on 127.0.0.1:<port>/metrics (0 = any free port; unset = off;
 *                       the inventory service)
 *   SHOP_ORDERS_TOPIC   where OrderPlaced goes (default shop.orders)
 *   DMTP_TRACING        1/true/yes/on: OpenTelemetry spans (rpc's tracing middleware first on every server and
 *                       client, `tracing` on the coordinator, the initiator and the subscriptions), to the SDK the
 *                       process registers: the demo preloads examples/otel-file.cjs (default off)
 */
import { flagFromEnv } from '../common';
import { EtcdRegistry } from '../registry';
import {
  tracingClientMiddleware,
  tracingServerMiddleware,
  type ClientMiddleware,
  type ServerMiddleware,
} from '../rpc';

export const shopEnv = {
  etcd: (process.env.ETCD_ENDPOINTS || 'http://127.0.0.1:23790').split(','),
  prefix: process.env.DMTP_PREFIX || '/dmtp',
  kafka: (process.env.KAFKA_BROKERS || '127.0.0.1:19092').split(','),
  databaseUrl: process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:25432/postgres',
  instanceId: (service: string) => process.env.INSTANCE_ID || `${service}-${process.pid}`,
  port: Number(process.env.PORT || 0),
  metricsPort: process.env.METRICS_PORT === undefined ? undefined : Number(process.env.METRICS_PORT),
  ordersTopic: process.env.SHOP_ORDERS_TOPIC || 'shop.orders',
  tracing: flagFromEnv(process.env, 'DMTP_TRACING'),
};

/** A server's tracing middleware, to put first in its list, when DMTP_TRACING is on (none otherwise). */
export const serverTracing = (): ServerMiddleware[] => (shopEnv.tracing ? [tracingServerMiddleware()] : []);

/** A client's tracing middleware, to put first in its list, when DMTP_TRACING is on (none otherwise). */
export const clientTracing = (): ClientMiddleware[] => (shopEnv.tracing ? [tracingClientMiddleware()] : []);

/**
 * The participants' recovery timing, short so that the demo's `kill -9` settles within its run: a prepared branch
 * asks its coordinator after 2 s in doubt and every 2 s after. Production keeps the defaults (configuration.md).
 */
export const shopRecovery = {
  recoveryIntervalMs: 2_000,
  inDoubtAfterMs: 2_000,
  deadlineGraceMs: 500,
} as const;

/** The registry every service registers in and finds the others through. */
export function shopRegistry(): EtcdRegistry {
  return new EtcdRegistry({ hosts: shopEnv.etcd, prefix: shopEnv.prefix });
}

/**
 * Runs a service: `start` brings it up and returns its stop function; the ready line goes to stdout; SIGTERM
 * or SIGINT stops it (deregistering first) and exits 0. A failure to start exits 1 with the reason on stderr.
 */
export function runService(
  name: string,
  start: () => Promise<{ address: string; metrics?: string; stop: () => Promise<void> }>,
): void {
  start().then(
    ({ address, metrics, stop }) => {
      process.stdout.write(
        JSON.stringify({ ready: true, service: name, address, metrics, pid: process.pid }) + '\n',
      );
      let stopping = false;
      const onSignal = () => {
        if (stopping) return;
        stopping = true;
        stop().then(
          () => process.exit(0),
          (err) => {
            process.stderr.write(`${name}: stop failed: ${String(err)}\n`);
            process.exit(1);
          },
        );
      };
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
    },
    (err) => {
      process.stderr.write(`${name} failed to start: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exit(1);
    },
  );
}

/** A free TCP port on 127.0.0.1 (participants fix their port before they start: it is in their branches). */
export { freePort } from '../common';
