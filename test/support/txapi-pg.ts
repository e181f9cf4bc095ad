/**
 * A PostgreSQL database of the test's own (named from its title), dropped afterwards together with any prepared
 * transaction left in it — a prepared transaction outlives its session and would block the shared server.
 */
import { Client } from 'pg';
import { DATABASE_URL, nameFor } from './env';

export interface TestDb {
  name: string;
  url: string;
  drop(): Promise<void>;
}

function urlFor(db: string): string {
  const u = new URL(DATABASE_URL);
  u.pathname = `/${db}`;
  return u.toString();
}

async function admin<T>(fn: (c: Client) => Promise<T>, url = DATABASE_URL): Promise<T> {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

export async function createTestDb(ctx: Mocha.Context, suffix = ''): Promise<TestDb> {
  const name = `t_${nameFor(ctx, 40)}${suffix}`.replace(/[^a-z0-9_]/g, '_');
  await admin((c) => c.query(`CREATE DATABASE ${name}`));
  const url = urlFor(name);
  return {
    name,
    url,
    drop: async () => {
      await rollbackPrepared(url);
      await admin((c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
    },
  };
}

/** Rolls back every prepared transaction of the database at `url`; returns their gids. */
export async function rollbackPrepared(url: string): Promise<string[]> {
  return admin(async (c) => {
    const r = await c.query<{ gid: string }>(
      'SELECT gid FROM pg_prepared_xacts WHERE database = current_database()',
    );
    for (const { gid } of r.rows) await c.query(`ROLLBACK PREPARED '${gid.replace(/'/g, "''")}'`);
    return r.rows.map((x) => x.gid);
  }, url);
}

export async function preparedGids(url: string): Promise<string[]> {
  return admin(async (c) => {
    const r = await c.query<{ gid: string }>(
      'SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid',
    );
    return r.rows.map((x) => x.gid);
  }, url);
}
