/**
 * The tables of the example shop, one database per service. Each service creates its own at start (IF NOT
 * EXISTS); examples/demo.ts creates them first too, to seed the stock.
 */
import { Pool } from 'pg';
import { surviveIdleErrors } from '../txapi';

/**
 * A pool of the shop's database that survives a lost idle connection (a database restart): the same one listener
 * DMTP's PostgreSQL parts add to the pools they are given, so a pool given to them too gets no second one.
 */
export function shopPool(connectionString: string, max: number): Pool {
  const pool = new Pool({ connectionString, max });
  surviveIdleErrors(pool);
  return pool;
}

/** shop_inventory: stock per item; `sold` only ever grows by what committed orders took. */
export const INVENTORY_SCHEMA = `
  CREATE TABLE IF NOT EXISTS items (
    sku text PRIMARY KEY,
    unit_price_cents bigint NOT NULL,
    stock int NOT NULL CHECK (stock >= 0),
    sold int NOT NULL DEFAULT 0
  );
  CREATE TABLE IF NOT EXISTS reservations (
    order_id text PRIMARY KEY,
    sku text NOT NULL,
    quantity int NOT NULL,
    xid text NOT NULL
  );`;

/** shop_payment: one row per charged order. */
export const PAYMENT_SCHEMA = `
  CREATE TABLE IF NOT EXISTS payments (
    order_id text PRIMARY KEY,
    customer text NOT NULL,
    card text NOT NULL,
    amount_cents bigint NOT NULL,
    xid text NOT NULL
  );`;

/** shop_shipping: one shipment per OrderPlaced event id (the primary key is the dedupe that survives restarts). */
export const SHIPPING_SCHEMA = `
  CREATE TABLE IF NOT EXISTS shipments (
    event_id text PRIMARY KEY,
    order_id text NOT NULL,
    sku text NOT NULL,
    quantity int NOT NULL,
    shipped_by text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
  );`;

/**
 * Creates a service's tables. Its instances share the database and may start together, and CREATE … IF NOT
 * EXISTS races against a concurrent twin, so the DDL runs under an advisory lock.
 */
export async function ensureSchema(pool: Pool, ddl: string): Promise<void> {
  const c = await pool.connect();
  try {
    await c.query('BEGIN');
    await c.query(`SELECT pg_advisory_xact_lock(hashtext('shop-schema'))`);
    await c.query(ddl);
    await c.query('COMMIT');
  } catch (err) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    c.release();
  }
}
