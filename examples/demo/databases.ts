/**
 * The shop's databases on the PostgreSQL server of DATABASE_URL: one per service, created fresh for every run
 * of the demo (a previous run's prepared transactions are rolled back first — they would block the drop).
 */
import { Client } from 'pg';
import { INVENTORY_SCHEMA, PAYMENT_SCHEMA, SHIPPING_SCHEMA } from '../shop-schema';

export const SHOP_DATABASES = {
  inventory: 'shop_inventory',
  payment: 'shop_payment',
  shipping: 'shop_shipping',
} as const;

export type ShopDb = keyof typeof SHOP_DATABASES;

export interface Item {
  sku: string;
  unitPriceCents: number;
  stock: number;
}

export function dbUrl(serverUrl: string, db: string): string {
  const u = new URL(serverUrl);
  u.pathname = `/${db}`;
  return u.toString();
}

export async function withClient<T>(url: string, fn: (c: Client) => Promise<T>): Promise<T> {
  const c = new Client({ connectionString: url });
  c.on('error', () => undefined);
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** The gids left in pg_prepared_xacts of one database. */
export function preparedIn(url: string): Promise<string[]> {
  return withClient(url, async (c) => {
    const r = await c.query<{ gid: string }>(
      'SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid',
    );
    return r.rows.map((x) => x.gid);
  });
}

/** Drops and recreates every shop database, creates the tables and seeds the stock. */
export async function resetShop(serverUrl: string, items: Item[]): Promise<Record<ShopDb, string>> {
  const urls = {} as Record<ShopDb, string>;
  for (const [key, db] of Object.entries(SHOP_DATABASES) as [ShopDb, string][]) {
    urls[key] = dbUrl(serverUrl, db);
    const exists = await withClient(serverUrl, async (c) => {
      const r = await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [db]);
      return r.rowCount! > 0;
    });
    if (exists) {
      await withClient(urls[key], async (c) => {
        for (const gid of await preparedIn(urls[key]))
          await c.query(`ROLLBACK PREPARED '${gid.replace(/'/g, "''")}'`);
      });
      await withClient(serverUrl, (c) => c.query(`DROP DATABASE ${db} WITH (FORCE)`));
    }
    await withClient(serverUrl, (c) => c.query(`CREATE DATABASE ${db}`));
  }
  await withClient(urls.inventory, async (c) => {
    await c.query(INVENTORY_SCHEMA);
    for (const it of items)
      await c.query('INSERT INTO items (sku, unit_price_cents, stock) VALUES ($1, $2, $3)', [
        it.sku,
        it.unitPriceCents,
        it.stock,
      ]);
  });
  await withClient(urls.payment, (c) => c.query(PAYMENT_SCHEMA));
  await withClient(urls.shipping, (c) => c.query(SHIPPING_SCHEMA));
  return urls;
}
