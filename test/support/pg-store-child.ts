/**
 * A participant process's hold on a PostgreSQL branch table, for the instance lock's kill -9 test: opens a
 * PgBranchStore for instance PGS_INSTANCE on table PGS_TABLE of the database PGS_URL, prints `{"ready":true}`
 * (what bench-process.ts's spawnReady waits for), and waits to be killed.
 *
 * `node --import tsx test/support/pg-store-child.ts` with PGS_URL, PGS_TABLE, PGS_INSTANCE.
 */
import { Pool } from 'pg';
import { PgBranchStore } from '../../txapi';

async function main(): Promise<void> {
  const pool = new Pool({ connectionString: process.env.PGS_URL, max: 1 });
  const store = new PgBranchStore({ pool, table: process.env.PGS_TABLE });
  await store.open({ instanceId: process.env.PGS_INSTANCE! });
  process.stdout.write('{"ready":true}\n');
  setInterval(() => undefined, 60_000); // held until killed
}

main().catch((err: Error) => {
  process.stderr.write(`pg store child failed: ${err.stack}\n`);
  process.exit(1);
});
