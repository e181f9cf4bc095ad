// The PostgreSQL resource when the application's pool acts as another role than it logs in as (a connect hook
// `SET ROLE app`, common with row-level security): PostgreSQL lets only the role that prepared a transaction (or
// a superuser) finish it. Before, the resource's own phase-2 pool copied the pool's options but not its connect
// hook: every COMMIT PREPARED ran as the login role and was refused, for good, locks held. Roles are
// cluster-wide: this test makes two of its own (unique names) on the shared server and drops them afterwards.
import { strict as assert } from 'node:assert';
import { Client, Pool, type PoolClient } from 'pg';
import { FailedPreconditionError, mintXid } from '../../../common';
import { pgResource, type BranchRecord } from '../../../txapi';
import { DATABASE_URL } from '../../support/env';
import { createTestDb, preparedGids, type TestDb } from '../../support/txapi-pg';

describe('txapi pgResource: a pool that sets its role on connect', function () {
  this.timeout(30_000);
  const tag = Math.random().toString(36).slice(2, 8);
  const [login, app] = [`dmtp_login_${tag}`, `dmtp_app_${tag}`];
  let db: TestDb;
  let url: string;
  const pools: Pool[] = [];

  const sql = async (q: string, to = DATABASE_URL) => {
    const c = new Client({ connectionString: to });
    await c.connect();
    try {
      await c.query(q);
    } finally {
      await c.end();
    }
  };
  const appPool = () => {
    const pool = new Pool({ connectionString: url, max: 2 });
    pool.on('connect', (c: PoolClient) => void c.query(`SET ROLE ${app}`));
    pools.push(pool);
    return pool;
  };
  const record = (): BranchRecord => ({
    xid: mintXid('roles-owner'),
    branchId: 'db@i1',
    resource: 'db',
    status: 'registered',
    coordinatorAddress: '127.0.0.1:1',
    deadlineAtMs: Date.now() + 60_000,
    reason: '',
    data: {},
    createdAtMs: Date.now(),
    updatedAtMs: Date.now(),
  });

  /** A branch of `r` inserts `v`, is prepared, then committed in phase 2 (on `r`'s phase-2 pool): none left prepared. */
  const insertPreparedCommitted = async (r: ReturnType<typeof pgResource>, v: number) => {
    const b = record();
    const client = await r.begin(b);
    await client.query('INSERT INTO t VALUES ($1)', [v]);
    assert.deepEqual(await r.prepare(b, client), { vote: 'prepared' });
    await r.commit({ ...b, status: 'prepared' }, undefined, false);
    assert.deepEqual(await preparedGids(db.url), []);
  };

  before(async function () {
    db = await createTestDb(this);
    await sql(`CREATE ROLE ${login} LOGIN NOSUPERUSER`);
    await sql(`CREATE ROLE ${app} NOLOGIN`);
    await sql(`GRANT ${app} TO ${login}`);
    await sql(`CREATE TABLE t (v int); GRANT ALL ON t TO ${app}`, db.url);
    const u = new URL(db.url);
    u.username = login;
    url = u.toString();
  });

  after(async () => {
    for (const p of pools) await p.end().catch(() => undefined);
    await db?.drop(); // rolls back anything left prepared, and the grants go with the database
    await sql(`DROP ROLE IF EXISTS ${login}`);
    await sql(`DROP ROLE IF EXISTS ${app}`);
  });

  it('finishes a prepared transaction as the role that prepared it', async () => {
    const r = pgResource({ name: 'db', pool: appPool() });
    await r.start();
    try {
      await insertPreparedCommitted(r, 1);
      const check = new Pool({ connectionString: db.url, max: 1 });
      pools.push(check);
      assert.equal((await check.query('SELECT count(*)::int AS n FROM t')).rows[0].n, 1);
    } finally {
      await r.stop();
    }
  });

  it('refuses to start when phase 2 would run as another role, naming both', async () => {
    const pool = new Pool({ connectionString: url, max: 2 });
    pools.push(pool);
    const r = pgResource({ name: 'db', pool });
    pool.on('connect', (c: PoolClient) => void c.query(`SET ROLE ${app}`)); // after the resource was made
    try {
      await assert.rejects(r.start(), (e: Error) => {
        assert.ok(e instanceof FailedPreconditionError, String(e));
        assert.match(
          e.message,
          new RegExp(`prepared as role '${app}' but would be finished .* as '${login}'`),
        );
        return true;
      });
    } finally {
      await r.stop();
    }
  });

  it('takes a superuser phase-2 pool (PostgreSQL lets a superuser finish any prepared transaction)', async () => {
    const superuser = new Pool({ connectionString: db.url, max: 2 }); // the test server's login is a superuser
    pools.push(superuser);
    const r = pgResource({ name: 'db', pool: appPool(), phase2Pool: superuser });
    await r.start();
    try {
      await insertPreparedCommitted(r, 2);
    } finally {
      await r.stop();
    }
  });
});
