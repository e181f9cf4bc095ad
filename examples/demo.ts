/**
 * `npm run demo` (scripts/demo.sh brings up etcd, Kafka and PostgreSQL first, then runs this):
 *
 *   npx tsx examples/demo.ts [--short]      # DEMO_ORDERS (default 300, --short 60), DEMO_CONCURRENCY (default 8)
 *
 * Starts the example shop — a coordinator, order, inventory ×2, payment ×2, loyalty, shipping ×2, each its own
 * process, all finding each other in etcd — drives orders through it, some failing on purpose, kills one
 * inventory instance with SIGKILL midway and starts it again later, then checks from the databases and the
 * Kafka topic that every order happened everywhere or nowhere. Exits 1 if a check fails. Stops everything it
 * started; service logs are in .dmtp/demo/logs/.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Etcd3 } from 'etcd3';
import { deleteTopics, ensureTopics } from '../events';
import { EtcdRegistry } from '../registry';
import { client } from '../rpc';
import { runChecks, unsettled, type Check, type CheckInput } from './demo/checks';
import { resetShop, type Item } from './demo/databases';
import { percentile, Progress } from './demo/progress';
import { killAll, ServiceProcess, stopStragglers, type ServiceSpec } from './demo/processes';
import { OrderService, OrderStatus } from './gen/shop/v1/shop';
import { DECLINED_CARD } from './payment-cards';
import { freePort } from './shop-env';

const ROOT = path.resolve(__dirname, '..');
const short = process.argv.includes('--short');
/** A count from the environment: a whole number from 1, else the demo stops before it starts anything. */
function count(name: string, dflt: number): number {
  const v = process.env[name];
  const n = v === undefined || v === '' ? dflt : Number(v);
  if (!Number.isSafeInteger(n) || n < 1) {
    process.stderr.write(`demo: ${name} must be a whole number from 1, not '${v}'\n`);
    process.exit(2);
  }
  return n;
}
const TOTAL = count('DEMO_ORDERS', short ? 60 : 300);
const CONCURRENCY = count('DEMO_CONCURRENCY', 8);
const etcdHosts = (process.env.ETCD_ENDPOINTS || 'http://127.0.0.1:23790').split(',');
const brokers = (process.env.KAFKA_BROKERS || '127.0.0.1:19092').split(',');
const serverUrl = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:25432/postgres';

const runId = `demo-${Date.now().toString(36)}`;
const prefix = `/dmtp-demo/${runId}`;
const topic = `shop.orders.${runId}`;
const workDir = path.join(ROOT, '.dmtp', 'demo');
const logDir = path.join(workDir, 'logs');
/** One file of spans per service (examples/otel-file.cjs preloaded, DMTP_TRACING=1). */
const spansDir = path.join(workDir, 'spans');
const OTEL_PRELOAD = path.join(__dirname, 'otel-file.cjs');
const ledgerFile = path.join(workDir, 'loyalty', 'legacy-ledger.json');

/** Twelve ordinary items and one that runs out almost at once ("out of stock" by design). */
const ITEMS: Item[] = [
  ...Array.from({ length: 12 }, (_, i) => ({
    sku: `sku-${String(i + 1).padStart(2, '0')}`,
    unitPriceCents: 500 + 250 * i,
    stock: 1_000,
  })),
  { sku: 'sku-limited', unitPriceCents: 9_900, stock: 4 },
];

/** Order n, deterministic: about 1 in 20 pays with the declined card, 1 in 25 is a slow legacy customer. */
function orderFor(n: number) {
  const r = (k: number) => Math.abs(Math.sin(n * 12.9898 + k * 78.233) * 43758.5453) % 1;
  return {
    orderId: `${runId}-${String(n).padStart(4, '0')}`,
    customer: n % 25 === 11 ? `slow-${n % 3}` : `c-${n % 37}`,
    sku: r(1) < 0.1 ? 'sku-limited' : ITEMS[Math.floor(r(2) * 12)].sku,
    quantity: 1 + Math.floor(r(3) * 3),
    card: n % 20 === 7 ? DECLINED_CARD : `4242-4242-4242-${String(n % 10_000).padStart(4, '0')}`,
  };
}

function why(reason: string): string {
  if (/out of stock/.test(reason)) return 'out of stock';
  if (/card declined/.test(reason)) return 'card declined';
  if (/legacy loyalty system timed out/.test(reason)) return 'legacy timeout';
  // Calls in flight on inventory-1 when it was killed, or its branches that could not prepare.
  if (/ECONNRESET|ECONNREFUSED|mux stream failed|inventory-1/.test(reason)) return 'cut off by the kill -9';
  // Mostly items whose rows the killed instance's prepared branches held until it came back.
  if (/lock timeout/.test(reason)) return 'item locked by a prepared branch (lock timeout)';
  return `other: ${reason.replace(/[0-9a-z-]+:[0-9a-z]+:[0-9a-z]+/g, '<xid>').slice(0, 90)}`;
}

const children: ServiceProcess[] = [];
let progress: Progress | undefined;
/** Set by the first SIGINT/SIGTERM (or the end of main): no new orders, clean-up under way. */
let exiting = false;
const say = (s: string) => (progress ? progress.note(s) : process.stdout.write(`${s}\n`));

async function start(spec: ServiceSpec): Promise<ServiceProcess> {
  const p = await ServiceProcess.start(spec, logDir);
  children.push(p);
  void p.exited.then((code) => {
    if (!p.expectedExit && !exiting)
      say(`!! ${spec.name} exited unexpectedly (${code}); see ${logDir}/${spec.name}.log`);
  });
  return p;
}

async function main(): Promise<number> {
  const t0 = Date.now();
  fs.rmSync(workDir, { recursive: true, force: true });
  console.log(`DMTP demo: ${TOTAL} orders, ${CONCURRENCY} at a time (run ${runId})`);
  console.log(
    `  etcd ${etcdHosts.join(',')} (prefix ${prefix}) · kafka ${brokers.join(',')} · postgres ${serverUrl}`,
  );

  const urls = await resetShop(serverUrl, ITEMS);
  await ensureTopics({ brokers }, [topic], { partitions: 3 });
  say(`databases shop_inventory, shop_payment, shop_shipping created; topic ${topic}`);

  const common = {
    ETCD_ENDPOINTS: etcdHosts.join(','),
    DMTP_PREFIX: prefix,
    KAFKA_BROKERS: brokers.join(','),
    SHOP_ORDERS_TOPIC: topic,
  };
  // Every service traced, its spans in a file of its own (a restarted instance appends to its file).
  fs.mkdirSync(spansDir, { recursive: true });
  const svc = (name: string, file: string, env: Record<string, string> = {}): ServiceSpec => ({
    name,
    file,
    env: {
      ...common,
      INSTANCE_ID: name,
      DMTP_TRACING: '1',
      NODE_OPTIONS: `--require ${JSON.stringify(OTEL_PRELOAD)}`,
      DMTP_SPANS_FILE: path.join(spansDir, `${name}.jsonl`),
      ...env,
    },
  });
  await start(svc('coordinator', 'coordinator.ts', { DMTP_COORDINATOR_ID: `shop-coord-${runId}` }));
  // Participants get fixed ports: a restarted instance must come back where its branches say it is.
  // The inventory instances serve their metrics (METRICS_PORT 0: any free port, named in their ready line).
  const inventory1 = svc('inventory-1', 'inventory.ts', {
    DATABASE_URL: urls.inventory,
    PORT: `${await freePort()}`,
    METRICS_PORT: '0',
  });
  const inventory2 = svc('inventory-2', 'inventory.ts', {
    DATABASE_URL: urls.inventory,
    PORT: `${await freePort()}`,
    METRICS_PORT: '0',
  });
  const started = await Promise.all([
    start(inventory1),
    start(inventory2),
    start(svc('payment-1', 'payment.ts', { DATABASE_URL: urls.payment, PORT: `${await freePort()}` })),
    start(svc('payment-2', 'payment.ts', { DATABASE_URL: urls.payment, PORT: `${await freePort()}` })),
    start(svc('loyalty-1', 'loyalty.ts', { LOYALTY_DIR: path.dirname(ledgerFile) })),
    start(svc('order-1', 'order.ts', { METRICS_PORT: '0' })), // its own count of its transactions
    // A group of this run's own: a previous run's members that died without leaving would hold up its join.
    start(
      svc('shipping-1', 'shipping.ts', { DATABASE_URL: urls.shipping, SHIPPING_GROUP: `shipping-${runId}` }),
    ),
    start(
      svc('shipping-2', 'shipping.ts', { DATABASE_URL: urls.shipping, SHIPPING_GROUP: `shipping-${runId}` }),
    ),
  ]);
  let victim = started[0];
  say(`started ${children.length} services in ${((Date.now() - t0) / 1000).toFixed(1)} s (logs: ${logDir})`);

  // The demo is a client like any other: it finds the order service in the registry.
  const registry = new EtcdRegistry({ hosts: etcdHosts, prefix });
  const orders = client(registry, 'order', OrderService, { timeoutMs: 30_000 });
  await orders.ready();

  const placed: CheckInput['placed'] = [];
  const rejected: string[] = [];
  const unknown: string[] = [];
  const reasons = new Map<string, number>();
  const latencies: number[] = [];
  const counts = () => ({
    done: placed.length + rejected.length + unknown.length,
    total: TOTAL,
    placed: placed.length,
    rejected: rejected.length,
    unknown: unknown.length,
  });
  progress = new Progress(counts);
  progress.start();
  const driveStart = Date.now();
  let chaos: Promise<void> = Promise.resolve();
  let killed = false;
  let restarted = false;
  const afterEach = () => {
    const { done } = counts();
    if (!killed && done >= Math.floor(TOTAL * 0.3)) {
      killed = true;
      chaos = chaos.then(async () => {
        say(`kill -9 inventory-1 (pid ${victim.pid}), ${done} orders in`);
        await victim.kill();
      });
    }
    if (killed && !restarted && done >= Math.floor(TOTAL * 0.5)) {
      restarted = true;
      chaos = chaos.then(async () => {
        victim = await start(inventory1);
        say(
          `inventory-1 started again (pid ${victim.pid}): it finishes its prepared branches with the coordinator`,
        );
      });
      // Not fatal to the orders (inventory-2 serves them); the settle step then reports what stayed prepared.
      chaos = chaos.catch((err) => {
        say(`!! could not start inventory-1 again: ${(err as Error).message}`);
      });
    }
  };
  let next = 0;
  const worker = async () => {
    while (next < TOTAL && !exiting) {
      const req = orderFor(next++);
      const began = Date.now();
      try {
        const res = await orders.placeOrder(req);
        if (res.status === OrderStatus.ORDER_STATUS_PLACED)
          placed.push({ orderId: res.orderId, amountCents: res.amountCents, xid: res.xid });
        else if (res.status === OrderStatus.ORDER_STATUS_REJECTED) {
          rejected.push(res.orderId);
          reasons.set(why(res.reason), (reasons.get(why(res.reason)) ?? 0) + 1);
        } else unknown.push(res.orderId);
      } catch (err) {
        unknown.push(req.orderId); // the order service did not answer: it may or may not have placed it
        const r = why(`PlaceOrder failed: ${(err as Error).message}`);
        reasons.set(r, (reasons.get(r) ?? 0) + 1);
      }
      latencies.push(Date.now() - began);
      afterEach();
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  await chaos;
  if (exiting) return 1; // stopped by a signal: the clean-up is under way, nothing to check
  const driveMs = Date.now() - driveStart;
  progress.stop();
  progress = undefined;
  await orders.close();
  await registry.close();

  const metrics = [victim, started[1]]
    .filter((p) => p.running && p.metrics !== undefined)
    .map((p) => ({ name: p.spec.name, metrics: p.metrics! }));
  const input: CheckInput = {
    urls,
    items: ITEMS,
    placed,
    rejected,
    unknown,
    ledgerFile,
    brokers,
    topic,
    metrics,
    initiatorMetrics: started.find((p) => p.spec.name === 'order-1' && p.running)?.metrics,
    spansDir,
  };
  const settleStart = Date.now();
  for (let open = await unsettled(input); open.length > 0; open = await unsettled(input)) {
    if (Date.now() - settleStart > 45_000) {
      say(`still unsettled after 45 s: ${open.join(', ')}`);
      break;
    }
    await sleep(500);
  }
  const settleMs = Date.now() - settleStart;
  const checks = await runChecks(input);
  report(
    { placed: placed.length, rejected: rejected.length, unknown: unknown.length },
    reasons,
    latencies,
    driveMs,
    settleMs,
    checks,
  );
  return checks.every((c) => c.ok) ? 0 : 1;
}

function report(
  c: { placed: number; rejected: number; unknown: number },
  reasons: Map<string, number>,
  latencies: number[],
  driveMs: number,
  settleMs: number,
  checks: Check[],
): void {
  const sorted = [...latencies].sort((a, b) => a - b);
  const total = c.placed + c.rejected + c.unknown;
  const lines = [
    '',
    'Report',
    `  orders      ${total}: ${c.placed} placed (committed), ${c.rejected} rejected (aborted)` +
      (c.unknown ? `, ${c.unknown} unknown` : ''),
    ...[...reasons]
      .sort((a, b) => b[1] - a[1])
      .map(([r, n]) => `                ${String(n).padStart(4)} ${r}`),
    `  throughput  ${(total / (driveMs / 1000)).toFixed(1)} orders/s over ${(driveMs / 1000).toFixed(1)} s (${CONCURRENCY} at a time)`,
    `  latency     p50 ${percentile(sorted, 50)} ms · p90 ${percentile(sorted, 90)} ms · p99 ${percentile(sorted, 99)} ms · max ${sorted[sorted.length - 1] ?? 0} ms`,
    `  settled     ${(settleMs / 1000).toFixed(1)} s after the last order (phase 2, recovery, shipping caught up)`,
    '',
    'Consistency (from the databases, the legacy ledger and the Kafka topic)',
    ...checks.map((k) => `  ${k.ok ? 'ok  ' : 'FAIL'}  ${k.name}: ${k.detail}`),
    '',
    checks.every((k) => k.ok)
      ? `checks: ${checks.length}/${checks.length} passed`
      : `checks: FAILED ${checks.filter((k) => !k.ok).length} of ${checks.length}`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

/**
 * Stops every service this run started (reverse order) and removes its registry and log keys, waiting at most
 * 5 s for etcd (a dead etcd must not hang the exit; the keys are under this run's own prefix).
 */
async function cleanup(): Promise<void> {
  progress?.stop();
  progress = undefined;
  for (const p of [...children].reverse()) await p.stop().catch(() => undefined);
  await stopStragglers();
  const etcd = new Etcd3({ hosts: etcdHosts });
  await Promise.race([
    etcd
      .delete()
      .prefix(prefix)
      .catch(() => undefined),
    sleep(5_000).then(() => say(`etcd did not answer within 5 s: keys under ${prefix} left`)),
  ]);
  etcd.close();
  // The run's own topic (its events were checked): not left behind on the broker run after run.
  await Promise.race([
    deleteTopics({ brokers }, [topic, `${topic}.dlq`]).catch(() => undefined),
    sleep(5_000),
  ]);
}

const finish = (code: number) => {
  if (exiting) return;
  exiting = true;
  cleanup().finally(() => process.exit(code));
};
/** The first signal stops everything in order; a second one kills the children at once and exits. */
const onSignal = (code: number) => {
  if (!exiting) return finish(code);
  say('second signal: killing the services (SIGKILL) and exiting now');
  killAll();
  process.exit(code);
};
process.on('SIGINT', () => onSignal(130));
process.on('SIGTERM', () => onSignal(143));
main().then(finish, (err) => {
  // One line (the logs say more); the stack only when asked for (DMTP_DEBUG=1).
  const debug = /^(1|true|yes|on)$/i.test(process.env.DMTP_DEBUG ?? '');
  const text = err instanceof Error ? (debug ? err.stack : err.message) : String(err);
  process.stderr.write(`demo failed: ${text} (logs: ${logDir})\n`);
  finish(1);
});
