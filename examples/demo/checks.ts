/**
 * The demo's consistency checks, computed from what is really there — the inventory and payment databases,
 * the shipments, the legacy loyalty ledger and the Kafka topic — against what the order service answered.
 * "Placed" orders must be everywhere, rejected ones nowhere, and nothing may be left half-done.
 */
import { readLedger } from '../legacy-points';
import { orderPlacedOf } from '../order-placed';
import { preparedIn, withClient, type Item, type ShopDb } from './databases';
import { readTopic } from './topic';
import { tracesCheck } from './traces';

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

export interface Placed {
  orderId: string;
  amountCents: number;
  /** Its transaction. */
  xid: string;
}

export interface CheckInput {
  urls: Record<ShopDb, string>;
  items: Item[];
  /** Orders the order service answered PLACED, REJECTED, or could not tell. */
  placed: Placed[];
  rejected: string[];
  unknown: string[];
  ledgerFile: string;
  brokers: string[];
  topic: string;
  /** The participants serving metrics (name, host:port): their own view of their branches is checked too. */
  metrics?: { name: string; metrics: string }[];
  /** host:port of the order service's /metrics (InitiatorMetrics): its own count of its transactions is checked. */
  initiatorMetrics?: string;
  /** Where the services wrote their spans (DMTP_TRACING): each placed order's trace is checked too. */
  spansDir?: string;
}

const sample = (xs: Iterable<string>) => [...xs].slice(0, 5).join(', ');

/** `actual` holds every placed order, no rejected one, and nothing else but (maybe) the unknown ones. */
function sameOrders(name: string, actual: string[], input: CheckInput, what: string): Check {
  const placed = new Set(input.placed.map((p) => p.orderId));
  const unknown = new Set(input.unknown);
  const got = new Set(actual);
  const missing = [...placed].filter((o) => !got.has(o));
  const extra = [...got].filter((o) => !placed.has(o) && !unknown.has(o));
  const dupes = actual.length - got.size;
  const ok = missing.length === 0 && extra.length === 0 && dupes === 0;
  return {
    name,
    ok,
    detail: ok
      ? `${got.size} ${what}, one per placed order`
      : `missing for placed orders: ${missing.length} (${sample(missing)}); for rejected orders: ${extra.length} (${sample(extra)}); duplicates: ${dupes}`,
  };
}

/** Everything that can still change (prepared branches, holds, shipments in flight) has settled. */
export async function unsettled(input: CheckInput): Promise<string[]> {
  const open: string[] = [];
  for (const db of ['inventory', 'payment'] as const) {
    const gids = await preparedIn(input.urls[db]);
    if (gids.length) open.push(`${gids.length} prepared in ${db}`);
    const n = await withClient(input.urls[db], async (c) => {
      const r = await c.query<{ n: string }>(
        `SELECT count(*) AS n FROM dmtp_branches WHERE status IN ('registered', 'prepared')`,
      );
      return Number(r.rows[0].n);
    });
    if (n) open.push(`${n} open branches in ${db}`);
  }
  const held = Object.values(readLedger(input.ledgerFile)).filter((h) => h.state === 'held').length;
  if (held) open.push(`${held} loyalty holds undecided`);
  const shipped = await withClient(input.urls.shipping, async (c) =>
    Number((await c.query<{ n: string }>('SELECT count(*) AS n FROM shipments')).rows[0].n),
  );
  if (shipped < input.placed.length) open.push(`${input.placed.length - shipped} shipments to come`);
  return open;
}

export async function runChecks(input: CheckInput): Promise<Check[]> {
  const checks: Check[] = [];
  const initial = new Map(input.items.map((i) => [i.sku, i.stock]));

  const inv = await withClient(input.urls.inventory, async (c) => ({
    items: (await c.query<{ sku: string; stock: number; sold: number }>('SELECT sku, stock, sold FROM items'))
      .rows,
    reservations: (
      await c.query<{ order_id: string; sku: string; quantity: number }>(
        'SELECT order_id, sku, quantity FROM reservations',
      )
    ).rows,
  }));
  const wrong = inv.items.filter((i) => i.stock + i.sold !== initial.get(i.sku));
  checks.push({
    name: 'stock + sold = initial stock',
    ok: wrong.length === 0 && inv.items.length === initial.size,
    detail: wrong.length
      ? `wrong for ${wrong.map((i) => `${i.sku} (${i.stock}+${i.sold}≠${initial.get(i.sku)})`).join(', ')}`
      : `${inv.items.length} items, ${inv.items.reduce((s, i) => s + i.sold, 0)} units sold`,
  });
  const reservedBySku = new Map<string, number>();
  for (const r of inv.reservations) reservedBySku.set(r.sku, (reservedBySku.get(r.sku) ?? 0) + r.quantity);
  const mismatched = inv.items.filter((i) => (reservedBySku.get(i.sku) ?? 0) !== i.sold);
  checks.push({
    name: 'units sold = units of the orders that took stock',
    ok: mismatched.length === 0,
    detail: mismatched.length ? `differs for ${mismatched.map((i) => i.sku).join(', ')}` : 'every item',
  });
  checks.push(
    sameOrders(
      'stock taken for placed orders only',
      inv.reservations.map((r) => r.order_id),
      input,
      'orders took stock',
    ),
  );

  const payments = await withClient(
    input.urls.payment,
    async (c) =>
      (
        await c.query<{ order_id: string; amount_cents: string }>(
          'SELECT order_id, amount_cents FROM payments',
        )
      ).rows,
  );
  checks.push(
    sameOrders(
      'payments match placed orders',
      payments.map((p) => p.order_id),
      input,
      'payments',
    ),
  );
  const charged = payments.reduce((s, p) => s + Number(p.amount_cents), 0);
  const expected = input.placed.reduce((s, p) => s + p.amountCents, 0);
  checks.push({
    name: 'amount charged = amount of placed orders',
    ok: input.unknown.length > 0 ? charged >= expected : charged === expected,
    detail: `${(charged / 100).toFixed(2)} charged, ${(expected / 100).toFixed(2)} placed`,
  });

  const ledger = Object.values(readLedger(input.ledgerFile));
  checks.push(
    sameOrders(
      'loyalty points confirmed for placed orders only',
      ledger.filter((h) => h.state === 'confirmed').map((h) => h.orderId),
      input,
      'awards confirmed',
    ),
  );
  const held = ledger.filter((h) => h.state === 'held');
  checks.push({
    name: 'no loyalty hold left undecided',
    ok: held.length === 0,
    detail: held.length
      ? `${held.length} held: ${sample(held.map((h) => h.orderId))}`
      : `${ledger.filter((h) => h.state === 'cancelled').length} cancelled`,
  });

  const events = (await readTopic(input.brokers, input.topic)).filter(
    (e) => e.header('type') === 'OrderPlaced',
  );
  const byId = new Map(events.map((e) => [e.id, orderPlacedOf(e.value).orderId]));
  const c = sameOrders(
    'one OrderPlaced per placed order, none for rejected',
    [...byId.values()],
    input,
    'events',
  );
  const redelivered = events.length - byId.size;
  if (redelivered) c.detail += ` (${redelivered} redelivered copies dropped by event id)`;
  checks.push(c);

  const shipments = await withClient(input.urls.shipping, async (cl) =>
    (await cl.query<{ order_id: string }>('SELECT order_id FROM shipments')).rows.map((r) => r.order_id),
  );
  checks.push(sameOrders('one shipment per placed order', shipments, input, 'shipments'));

  const prepared = [...(await preparedIn(input.urls.inventory)), ...(await preparedIn(input.urls.payment))];
  checks.push({
    name: 'no prepared transaction left (pg_prepared_xacts)',
    ok: prepared.length === 0,
    detail: prepared.length
      ? `${prepared.length} left: ${sample(prepared)}`
      : 'none in shop_inventory, shop_payment',
  });
  if (input.metrics?.length) checks.push(await participantsSettled(input.metrics));
  if (input.initiatorMetrics) checks.push(await initiatorAgrees(input.initiatorMetrics, input));
  if (input.spansDir) checks.push(tracesCheck(input.spansDir, input.placed, input.topic));
  return checks;
}

/** One sample of a Prometheus text exposition: the value of `name` with exactly these labels (0 when absent). */
function sampleOf(text: string, name: string, labels: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}} `));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

/**
 * The inventory instances' own view (ParticipantMetrics, scraped over HTTP): no branch left registered or
 * prepared, no branch-store failure. A restarted instance reads its unfinished branches from the store at
 * start; one that another instance finished meanwhile leaves its gauge at its next recovery round (2 s), so
 * this waits up to 10 s for the gauges to settle.
 */
async function participantsSettled(services: { name: string; metrics: string }[]): Promise<Check> {
  const until = Date.now() + 10_000;
  for (;;) {
    const views = await Promise.all(
      services.map(async (s) => {
        // An instance that stopped answering fails the check, naming why, rather than the whole demo.
        const got = await fetch(`http://${s.metrics}/metrics`).then(
          (r) => r.text(),
          (err: Error) => err,
        );
        const text = typeof got === 'string' ? got : '';
        return {
          name: s.name,
          unreachable: typeof got === 'string' ? undefined : got.message,
          open:
            sampleOf(text, 'dmtp_participant_branches', 'state="registered"') +
            sampleOf(text, 'dmtp_participant_branches', 'state="prepared"'),
          committed: sampleOf(text, 'dmtp_participant_branches_total', 'outcome="committed"'),
          storeFailures: STORE_OPS.reduce(
            (n, op) => n + sampleOf(text, 'dmtp_participant_store_failures_total', `op="${op}"`),
            0,
          ),
        };
      }),
    );
    const ok = views.every((v) => !v.unreachable && v.open === 0 && v.storeFailures === 0);
    if (ok || Date.now() > until) {
      return {
        name: 'no branch left unfinished in the inventory participants (their /metrics)',
        ok,
        detail: views
          .map((v) =>
            v.unreachable
              ? `${v.name}: /metrics did not answer (${v.unreachable})`
              : `${v.name}: ${v.open} open, ${v.committed} committed since it started` +
                (v.storeFailures ? `, ${v.storeFailures} store failures` : ''),
          )
          .join('; '),
      };
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

const STORE_OPS = ['get', 'transition', 'set_data', 'list', 'purge'];

/**
 * The order service's own count (InitiatorMetrics, scraped over HTTP) against what the demo was answered: every
 * order PLACED committed there, directly or after an unknown outcome it then asked about, and nothing else
 * committed but orders the demo got no answer for; nothing still running; no call in a transaction answered by a
 * server that ignored it.
 */
async function initiatorAgrees(address: string, input: CheckInput): Promise<Check> {
  const name = "the order service's own count of its transactions agrees (its /metrics)";
  const got = await fetch(`http://${address}/metrics`).then(
    (r) => r.text(),
    (err: Error) => err,
  );
  if (typeof got !== 'string') return { name, ok: false, detail: `/metrics did not answer (${got.message})` };
  const ended = (outcome: string) =>
    sampleOf(got, 'dmtp_initiator_transactions_total', `initiator="order",outcome="${outcome}"`);
  const [committed, aborted, unknown] = [ended('committed'), ended('aborted'), ended('unknown')];
  const running = sampleOf(got, 'dmtp_initiator_transactions_running', 'initiator="order"');
  const line = got.split('\n').find((l) => l.startsWith('dmtp_initiator_calls_ignored_total '));
  const ignored = line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
  const placed = input.placed.length;
  const ok =
    committed <= placed + input.unknown.length &&
    placed <= committed + unknown &&
    running === 0 &&
    ignored === 0;
  return {
    name,
    ok,
    detail:
      `${committed} committed, ${aborted} aborted, ${unknown} unknown, ${running} running, ${ignored} calls ` +
      `ignored; the demo saw ${placed} placed`,
  };
}
