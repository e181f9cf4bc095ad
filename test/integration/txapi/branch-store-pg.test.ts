import { strict as assert } from 'node:assert';
import { Pool } from 'pg';
import { PgBranchStore } from '../../../txapi';
import { branchStoreContract } from '../../support/branch-store-contract';
import { createTestDb, type TestDb } from '../../support/txapi-pg';

describe('txapi PgBranchStore contract', function () {
  let db: TestDb;
  let pool: Pool;
  let n = 0;

  before(async function () {
    db = await createTestDb(this);
    pool = new Pool({ connectionString: db.url, max: 4 });
  });
  after(async () => {
    await pool.end();
    await db.drop();
  });

  // One database for the suite, a table per test: a restart is a new store (and pool) on the same table.
  branchStoreContract(async () => {
    const table = `branches_${++n}`;
    let store = new PgBranchStore({ pool, table });
    await store.open();
    let second: Pool | undefined;
    return {
      store,
      reopen: async () => {
        await store.close();
        await second?.end();
        second = new Pool({ connectionString: db.url, max: 2 });
        store = new PgBranchStore({ pool: second, table });
        await store.open();
        return store;
      },
      cleanup: async () => {
        await store.close();
        await second?.end();
        await pool.query(`DROP TABLE IF EXISTS ${table}`);
      },
    };
  });
});

describe('txapi PgBranchStore open', function () {
  let db: TestDb;

  before(async function () {
    db = await createTestDb(this);
  });
  after(async () => {
    await db?.drop();
  });

  it('opens from many instances of one participant at once (they share the database)', async () => {
    const pools = Array.from({ length: 6 }, () => new Pool({ connectionString: db.url, max: 1 }));
    try {
      await Promise.all(pools.map((pool) => new PgBranchStore({ pool }).open()));
      const r = await pools[0].query(`SELECT to_regclass('dmtp_branches') AS t`);
      assert.equal(r.rows[0].t, 'dmtp_branches');
    } finally {
      await Promise.all(pools.map((p) => p.end()));
    }
  });
});
