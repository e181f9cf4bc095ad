import { strict as assert } from 'node:assert';
import { Client, Pool } from 'pg';
import { mintXid, UnavailableError } from '../../../common';
import { PgBranchStore } from '../../../txapi';
import { branchStoreContract } from '../../support/branch-store-contract';
import { muteServer, tcpRelay } from '../../support/tcp-relay';
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

  it('purges old final rows in batches through an index of its own, and only those', async () => {
    const pool = new Pool({ connectionString: db.url, max: 2 });
    try {
      const store = new PgBranchStore({ pool, table: 'purge_batches', purgeBatchRows: 3 });
      await store.open();
      const idx = await pool.query(`SELECT indexdef FROM pg_indexes WHERE indexname = 'purge_batches_final'`);
      assert.match(idx.rows[0]?.indexdef ?? '', /\(updated_at_ms\) WHERE/);
      const finals = Array.from({ length: 10 }, (_, i) => ({ xid: mintXid('purge'), branchId: `db@f${i}` }));
      for (const k of finals) await store.transition(k, 'rolled_back', { resource: 'db' });
      const open = { xid: mintXid('purge'), branchId: 'db@open' };
      await store.transition(open, 'registered', { resource: 'db' });
      assert.equal(await store.purge(Date.now() + 1), 10, 'all ten, three at a time');
      assert.equal((await pool.query('SELECT count(*)::int AS n FROM purge_batches')).rows[0].n, 1);
      assert.equal((await store.get(open))?.status, 'registered');
      assert.equal(await store.purge(Date.now() + 1), 0);
      assert.throws(() => new PgBranchStore({ pool, purgeBatchRows: 0 }), /purgeBatchRows must be/);
      assert.throws(() => new PgBranchStore({ pool, queryTimeoutMs: 0 }), /queryTimeoutMs must be/);
      await store.close();
    } finally {
      await pool.end();
    }
  });

  it('keeps the process alive when the server ends an idle connection of its pool, and goes on working', async () => {
    const pool = new Pool({ connectionString: db.url, max: 1 });
    const admin = new Pool({ connectionString: db.url, max: 1 });
    try {
      const store = new PgBranchStore({ pool, table: 'idle_loss' });
      await store.open();
      const pid = (await pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      await admin.query('SELECT pg_terminate_backend($1)', [pid]);
      // The pool drops the dead idle client and emits 'error': with no listener (the store's), an uncaught
      // exception. No listener of the test's own here, so only the store's can be the one.
      for (let i = 0; i < 100 && pool.totalCount > 0; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(pool.totalCount, 0, 'the pool noticed the lost connection');
      const key = { xid: 'idle-owner:1:a', branchId: 'b1' };
      await store.transition(key, 'registered', { resource: 'r' });
      assert.equal((await store.get(key))?.status, 'registered', 'a new connection took its place');
    } finally {
      await pool.end();
      await admin.end();
    }
  });

  it("writes its records on connections that flush their commits, whatever the database's synchronous_commit", async () => {
    // Before, with synchronous_commit = off a "prepared" record could be lost in a database crash while its
    // PREPARE TRANSACTION survived: recovery then rolled back a branch that had voted yes.
    const admin = new Pool({ connectionString: db.url, max: 1 });
    const dbName = (await admin.query<{ d: string }>('SELECT current_database() AS d')).rows[0].d;
    await admin.query(`ALTER DATABASE ${dbName} SET synchronous_commit = off`);
    await admin.end();
    const pool = new Pool({ connectionString: db.url, max: 1 }); // one connection: the store's and the check's
    try {
      assert.equal((await pool.query('SHOW synchronous_commit')).rows[0].synchronous_commit, 'off');
      const store = new PgBranchStore({ pool, table: 'flushed' });
      await store.open();
      const key = { xid: mintXid('flush-owner'), branchId: 'db@i1' };
      const enlist = { resource: 'db', coordinatorAddress: '127.0.0.1:1', deadlineAtMs: Date.now() + 60_000 };
      await store.transition(key, 'registered', enlist);
      await store.transition(key, 'prepared');
      assert.equal((await pool.query('SHOW synchronous_commit')).rows[0].synchronous_commit, 'on');
    } finally {
      await pool.end();
      const reset = new Pool({ connectionString: db.url, max: 1 });
      await reset.query(`ALTER DATABASE ${dbName} RESET synchronous_commit`);
      await reset.end();
    }
  });

  it('stores a reason holding a NUL (PostgreSQL refuses it in text) instead of failing the transition', async () => {
    // Before, a Rollback whose reason held a NUL rolled the resource back, then failed to record it, for every
    // retry: the record said "prepared" for a branch PostgreSQL had already rolled back.
    const pool = new Pool({ connectionString: db.url, max: 1 });
    try {
      const store = new PgBranchStore({ pool, table: 'nul_reasons' });
      await store.open();
      const key = { xid: mintXid('nul-owner'), branchId: 'db@i1' };
      await store.transition(key, 'registered', {
        resource: 'db',
        coordinatorAddress: '127.0.0.1:1',
        deadlineAtMs: Date.now() + 60_000,
      });
      const r = await store.transition(key, 'rolled_back', { reason: 'block threw: bad\0byte' });
      assert.equal(r.record.status, 'rolled_back');
      assert.equal((await store.get(key))?.reason, 'block threw: bad\uFFFDbyte');
    } finally {
      await pool.end();
    }
  });

  it('a lazy enlist writes no row, and looks for one only when its caller did not just find none', async () => {
    const selects: string[] = [];
    // Every statement of the pool's connections passes here: a string, or a statement's config.
    class SeenClient extends Client {
      override query(...a: unknown[]): never {
        const text = typeof a[0] === 'string' ? a[0] : (a[0] as { text?: string } | undefined)?.text;
        if (text && /^\s*SELECT \* FROM lazy_reads/.test(text)) selects.push(text);
        return (super.query as (...b: unknown[]) => never)(...a);
      }
    }
    const pool = new Pool({ connectionString: db.url, max: 2, Client: SeenClient });
    try {
      const store = new PgBranchStore({ pool, table: 'lazy_reads' });
      await store.open();
      const enlist = { resource: 'db', coordinatorAddress: '127.0.0.1:1', deadlineAtMs: Date.now() + 60_000 };
      const a = { xid: mintXid('lazy-owner'), branchId: 'db@i1' };
      assert.equal(await store.get(a), undefined);
      await store.transition(a, 'registered', enlist, { lazy: true });
      assert.equal(selects.length, 1, 'the get() that found nothing was the check');
      const b = { xid: mintXid('lazy-owner'), branchId: 'db@i1' };
      await store.transition(b, 'registered', enlist, { lazy: true });
      assert.equal(selects.length, 2, 'without a get() just before, one SELECT looks');
      const rows = await pool.query('SELECT count(*)::int AS n FROM lazy_reads');
      assert.equal(rows.rows[0].n, 0, 'no row until the next change');
      const c = { xid: mintXid('lazy-owner'), branchId: 'db@i1' };
      assert.equal(await store.get(c), undefined);
      await store.transition(c, 'rolled_back', { resource: 'db', reason: 'null rollback' });
      await assert.rejects(store.transition(c, 'registered', enlist, { lazy: true }), /rolled_back/);
    } finally {
      await pool.end();
    }
  });

  it('fails a call with UNAVAILABLE, naming the branch, once PostgreSQL went silent; changes nothing; then reconnects', async () => {
    // A relay that stops forwarding without closing anything: the pool's one connection goes silent, as with a
    // frozen server or a network that drops packets (TCP would hold such a call ~15 minutes).
    const pg = new URL(db.url);
    const relay = await tcpRelay(pg.host);
    const pool = new Pool({
      connectionString: Object.assign(new URL(db.url), { host: relay.address }).toString(),
      max: 1,
    });
    try {
      const store = new PgBranchStore({ pool, table: 'silent', queryTimeoutMs: 300 });
      await store.open();
      const key = { xid: mintXid('silent-owner'), branchId: 'db@i1' };
      await store.transition(key, 'registered', { resource: 'db', coordinatorAddress: '127.0.0.1:1' });
      relay.freeze();
      await assert.rejects(store.transition(key, 'prepared'), (err: UnavailableError) => {
        assert.ok(err instanceof UnavailableError, String(err));
        assert.match(err.message, /branch store silent: PostgreSQL did not answer within 300 ms/);
        assert.deepEqual(err.details, { table: 'silent', xid: key.xid, branchId: key.branchId });
        return true;
      });
      // The silent connection was closed, not given back: the next call opens a new one, which gets through.
      assert.equal((await store.get(key))?.status, 'registered', 'the UPDATE never reached the database');
      assert.equal(relay.connections, 2);
      assert.equal((await store.transition(key, 'prepared')).record.status, 'prepared');
    } finally {
      await pool.end();
      relay.close();
    }
  });

  it('fails open() and every call with UNAVAILABLE when the server takes the connection and never answers', async () => {
    const mute = await muteServer();
    const url = new URL(db.url);
    url.host = mute.address;
    const pool = new Pool({ connectionString: url.toString(), max: 1 });
    try {
      const store = new PgBranchStore({ pool, table: 'unanswered', queryTimeoutMs: 200 });
      await assert.rejects(store.open(), (err: UnavailableError) => {
        assert.ok(err instanceof UnavailableError, String(err));
        assert.match(
          err.message,
          /branch store unanswered: no PostgreSQL connection within 200 ms \(queryTimeoutMs\)$/,
        );
        return true;
      });
      const key = { xid: mintXid('silent-owner'), branchId: 'db@i1' };
      await assert.rejects(store.get(key), (err: UnavailableError) => {
        assert.ok(err instanceof UnavailableError, String(err));
        assert.match(
          err.message,
          new RegExp(`no PostgreSQL connection within 200 ms .*\\(branch db@i1 of ${key.xid}\\)`),
        );
        return true;
      });
    } finally {
      mute.close();
      await pool.end();
    }
  });
});
