import { strict as assert } from 'node:assert';
import { Client } from 'pg';
import { DATABASE_URL, nameFor } from '../../support/env';

// Runs first and fails loudly when the local PostgreSQL is missing or cannot do prepared transactions.
describe('smoke: postgres', function () {
  it('commits a PREPARE TRANSACTION from a second connection', async function () {
    const name = nameFor(this).replace(/-/g, '_');
    const table = `smoke_${name}`;
    const gid = `dmtp-smoke-${name}`;
    const a = new Client({ connectionString: DATABASE_URL });
    const b = new Client({ connectionString: DATABASE_URL });
    await a.connect();
    await b.connect();
    try {
      await a.query(`CREATE TABLE ${table} (v text)`);
      await a.query('BEGIN');
      await a.query(`INSERT INTO ${table} VALUES ('prepared')`);
      await a.query(`PREPARE TRANSACTION '${gid}'`);
      const inDoubt = await b.query('SELECT gid FROM pg_prepared_xacts WHERE gid = $1', [gid]);
      assert.equal(inDoubt.rowCount, 1, 'the prepared transaction is listed in pg_prepared_xacts');
      assert.equal(
        (await b.query(`SELECT * FROM ${table}`)).rowCount,
        0,
        'not visible before COMMIT PREPARED',
      );
      await b.query(`COMMIT PREPARED '${gid}'`);
      const rows = await b.query(`SELECT v FROM ${table}`);
      assert.deepEqual(
        rows.rows.map((r: { v: string }) => r.v),
        ['prepared'],
      );
    } finally {
      await b.query(`ROLLBACK PREPARED '${gid}'`).catch(() => undefined);
      await b.query(`DROP TABLE IF EXISTS ${table}`);
      await a.end();
      await b.end();
    }
  });
});
