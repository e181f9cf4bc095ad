/**
 * One process per participant instance on a PostgreSQL database (txapi/pg-instance-lock.ts), on the real
 * PostgreSQL: a twin's open() is refused and names the holder; a holder killed with kill -9 frees the instance at
 * once; a holder whose lock connection is lost (silently too: its heartbeat notices) takes the lock back, ending
 * its own session if the server still has it, and refuses writes if a twin took it first; a twin Participant is
 * refused at start() before its recovery rolls back the live instance's branches, and a twin's pgResource before
 * its recovery rolls back a transaction the live instance just prepared.
 */
import { strict as assert } from 'node:assert';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Pool } from 'pg';
import { FailedPreconditionError, mintXid, UnavailableError } from '../../../common';
import {
  defineResource,
  FileBranchStore,
  gidFor,
  Participant,
  ParticipantMetrics,
  PgBranchStore,
  pgResource,
} from '../../../txapi';
import { spawnReady } from '../../support/bench-process';
import { tcpRelay, type TcpRelay } from '../../support/tcp-relay';
import { createTestDb, preparedGids, type TestDb } from '../../support/txapi-pg';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `fn()` until it resolves, at most `ms`; the last error otherwise. */
async function eventually<T>(fn: () => Promise<T>, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(50);
    }
  }
}

function refusedAsTwin(table: string, instanceId: string, holder: RegExp) {
  return (err: FailedPreconditionError) => {
    assert.ok(err instanceof FailedPreconditionError, String(err));
    assert.match(
      err.message,
      new RegExp(`^branch store ${table}: instance '${instanceId}' is already running against this database`),
    );
    assert.match(err.message, holder);
    assert.deepEqual(err.details, { table, instanceId });
    return true;
  };
}

describe('txapi instance lock (PgBranchStore, pgResource)', function () {
  this.timeout(30_000);
  let db: TestDb;
  const pools: Pool[] = [];
  const poolOf = (url = db.url) => {
    const p = new Pool({ connectionString: url, max: 2 });
    pools.push(p);
    return p;
  };
  const stores: PgBranchStore[] = [];
  const storeOf = (
    table: string,
    pool = poolOf(),
    o: { instanceLock?: boolean; queryTimeoutMs?: number } = {},
  ) => {
    const s = new PgBranchStore({ pool, table, ...o });
    stores.push(s);
    return s;
  };
  let child: ChildProcess | undefined;
  /** The backend holding the lock of `instanceId` (any table), if any. */
  const lockBackend = async (instanceId: string) => {
    const r = await poolOf().query<{ pid: number }>(
      `SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
       WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE $1`,
      [`dmtp ${instanceId} pid %`],
    );
    return r.rows[0]?.pid;
  };
  const relays: TcpRelay[] = [];
  /**
   * A holder store for `instanceId` whose connections pass through a relay of their own; its pool keeps no idle
   * connection, so the lock's is the only one the relay carries. With the backend holding the lock.
   */
  const holderViaRelay = async (table: string, instanceId: string) => {
    const relay = await tcpRelay(new URL(db.url).host);
    relays.push(relay);
    const url = Object.assign(new URL(db.url), { host: relay.address }).toString();
    const pool = new Pool({ connectionString: url, max: 2, idleTimeoutMillis: 20 });
    pools.push(pool);
    const holder = storeOf(table, pool, { queryTimeoutMs: 3_000 });
    await holder.open({ instanceId });
    await sleep(200); // the pool's connections closed
    const backend = await lockBackend(instanceId);
    assert.ok(backend, 'the holder holds the lock');
    return { holder, relay, backend };
  };

  before(async function () {
    db = await createTestDb(this);
  });
  afterEach(async () => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    child = undefined;
    for (const r of relays.splice(0)) r.close();
    for (const s of stores.splice(0)) await s.close();
    for (const p of pools.splice(0)) await p.end();
  });
  after(async () => {
    await db?.drop();
  });

  it('refuses a second process with the same instance id, naming the holder; others open beside it', async () => {
    const first = storeOf('twins');
    await first.open({ instanceId: 'inv-1' });
    await assert.rejects(
      storeOf('twins').open({ instanceId: 'inv-1' }),
      refusedAsTwin('twins', 'inv-1', new RegExp(`application 'dmtp inv-1 pid ${process.pid}@`)),
    );
    await storeOf('twins').open({ instanceId: 'inv-2' }); // another instance of the service
    await storeOf('other_twins').open({ instanceId: 'inv-1' }); // another table
    await storeOf('twins').open(); // not for a participant: no lock
    await storeOf('twins', poolOf(), { instanceLock: false }).open({ instanceId: 'inv-1' }); // turned off
    // The refused store took nothing: the holder's writes go on.
    const key = { xid: mintXid('twins'), branchId: 'db@inv-1' };
    await first.transition(key, 'registered', { resource: 'db' });
    await first.close();
    await storeOf('twins').open({ instanceId: 'inv-1' }); // free once the holder closed
  });

  it("keeps the lock session's server side on a ~10 s keepalive, so a host that vanished frees it in ~25 s", async () => {
    // PostgreSQL's own default is the OS's (2 hours here): a replacement would be refused that long after its
    // predecessor's host lost power. Read from the kernel: the server socket's keepalive timer (/proc/net/tcp).
    const store = storeOf('keepalive');
    await store.open({ instanceId: 'inv-k' });
    const r = await poolOf().query<{ port: number }>(
      `SELECT a.client_port AS port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
       WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE 'dmtp inv-k pid %'`,
    );
    const clientPort = r.rows[0]?.port;
    assert.ok(clientPort > 0, 'the lock session is a TCP connection');
    const hex = (n: number) => n.toString(16).toUpperCase().padStart(4, '0');
    const server = `:${hex(Number(new URL(db.url).port))}`;
    const client = `:${hex(clientPort)}`;
    await eventually(async () => {
      const line = readFileSync('/proc/net/tcp', 'utf8')
        .split('\n')
        .map((l) => l.trim().split(/\s+/))
        .find((f) => f[1]?.endsWith(server) && f[2]?.endsWith(client));
      assert.ok(line, `the server's socket to port ${clientPort}`);
      const [timer, ticks] = line[5].split(':');
      assert.equal(timer, '02', 'a keepalive timer, the connection idle');
      assert.ok(parseInt(ticks, 16) <= 1_000, `due within 10 s, not ${parseInt(ticks, 16) / 100} s`);
    }, 5_000);
  });

  it('frees the instance at once when its holder is killed with kill -9', async () => {
    const { proc, exited } = await spawnReady('test/support/pg-store-child.ts', {
      PGS_URL: db.url,
      PGS_TABLE: 'killed',
      PGS_INSTANCE: 'inv-9',
    });
    child = proc;
    await assert.rejects(
      storeOf('killed').open({ instanceId: 'inv-9' }),
      refusedAsTwin('killed', 'inv-9', new RegExp(`application 'dmtp inv-9 pid ${proc.pid}@`)),
    );
    proc.kill('SIGKILL');
    await exited;
    // PostgreSQL ends the dead client's session when its socket closes, and the session's locks with it: a
    // restart right away is not refused (open() asks again for a moment while that session ends).
    await storeOf('killed').open({ instanceId: 'inv-9' });
  });

  it('takes its lock back after losing the connection; refuses writes once a twin took it meanwhile', async () => {
    const relay = await tcpRelay(new URL(db.url).host);
    try {
      const viaRelay = Object.assign(new URL(db.url), { host: relay.address }).toString();
      const holder = storeOf('lost', poolOf(viaRelay), { queryTimeoutMs: 3_000 });
      await holder.open({ instanceId: 'inv-3' });
      const key = (i: number) => ({ xid: mintXid('lost'), branchId: `db@inv-3-${i}` });

      const lockHolder = () => lockBackend('inv-3');
      const before = await lockHolder();
      assert.ok(before, 'the holder holds the lock');

      // The connection drops (a network blip, a restart) and stays down a moment: a write made meanwhile waits
      // for the lock, then goes through once the holder took it again; nobody else can take it then.
      relay.refuse(true);
      relay.cut();
      await eventually(async () => assert.equal(await lockHolder(), undefined, 'the session ended'));
      await sleep(100); // the holder saw its connections close
      const written = key(1);
      const write = holder.transition(written, 'registered', { resource: 'db' });
      await sleep(300);
      relay.refuse(false);
      assert.equal((await write).record.status, 'registered');
      const now = await lockHolder();
      assert.ok(now !== undefined && now !== before, `held again on a new connection (${before} → ${now})`);
      await assert.rejects(storeOf('lost').open({ instanceId: 'inv-3' }), FailedPreconditionError);

      // It drops again and stays down for the holder: its writes wait for the lock, then fail UNAVAILABLE.
      relay.refuse(true);
      relay.cut();
      // (Once the holder saw its connections close: a write sent before that fails on its dead connection.)
      await eventually(async () => {
        const waited = Date.now();
        await assert.rejects(holder.transition(key(2), 'registered', { resource: 'db' }), (err: Error) => {
          assert.ok(err instanceof UnavailableError, String(err));
          assert.match(
            err.message,
            /^branch store lost: instance 'inv-3' lost its lock's connection and has not taken the lock again within 3000 ms \(queryTimeoutMs\); nothing done/,
          );
          return true;
        });
        assert.ok(Date.now() - waited >= 2_900, 'it waited for the lock');
      });
      // A twin starts meanwhile and gets the lock.
      const twin = storeOf('lost');
      await eventually(() => twin.open({ instanceId: 'inv-3' }));
      relay.refuse(false);
      // Back, the holder finds the twin holding its instance: it writes no more, the twin does.
      const refused = async () => {
        await assert.rejects(holder.transition(key(4), 'registered', { resource: 'db' }), (err: Error) => {
          assert.ok(err instanceof FailedPreconditionError, String(err));
          assert.match(
            err.message,
            /^branch store lost: instance 'inv-3' lost its lock to another process \(held by PostgreSQL backend \d+, application 'dmtp inv-3 pid \d+@.*\); this process no longer acts on its branches/,
          );
          return true;
        });
      };
      await eventually(refused);
      const rows = await poolOf().query('SELECT count(*)::int AS n FROM lost');
      assert.equal(rows.rows[0].n, 1, 'only the write made while the holder held its lock');
      const twins = key(3);
      await twin.transition(twins, 'registered', { resource: 'db' });
      assert.equal((await holder.get(twins))?.status, 'registered', 'reads go on');
    } finally {
      relay.close();
    }
  });

  it('notices a lock session the server ended without telling it, and stops writing once a twin holds the lock', async () => {
    // The route to the holder is lost and the server's keepalive ends the lock's session (here: terminated while
    // the relay passes nothing on). The holder's own TCP keepalive would not notice for many minutes, and it went
    // on writing as a holder beside the twin that took the free lock. Its heartbeat notices within ~10 s.
    const { holder, relay, backend } = await holderViaRelay('silent', 'inv-5');
    relay.partition();
    await poolOf().query('SELECT pg_terminate_backend($1)', [backend]);
    const twin = storeOf('silent');
    await eventually(() => twin.open({ instanceId: 'inv-5' }));
    const noticedFrom = Date.now();
    const key = (i: number) => ({ xid: mintXid('silent'), branchId: `db@inv-5-${i}` });
    let i = 0;
    await eventually(async () => {
      await assert.rejects(holder.transition(key(++i), 'registered', { resource: 'db' }), (err: Error) => {
        assert.ok(err instanceof FailedPreconditionError, String(err));
        assert.match(err.message, /^branch store silent: instance 'inv-5' lost its lock to another process/);
        return true;
      });
    }, 15_000);
    assert.ok(
      Date.now() - noticedFrom < 12_000,
      `noticed within two heartbeats (${Date.now() - noticedFrom} ms)`,
    );
  });

  it('does not count its lock connection lost when its own event loop was blocked past a heartbeat', async () => {
    // A heartbeat's answer came in time, but this process's event loop was blocked (a long synchronous job, a
    // stalled VM) until after the heartbeat's deadline: its timer then fires before the answer waiting in the
    // socket is read. Before, that counted the connection lost: the holder dropped it and took its lock again.
    const { holder, relay, backend } = await holderViaRelay('stalled', 'inv-8');
    const lock = (
      holder as unknown as { lock: { held: boolean; client: { query: (q: unknown) => unknown } } }
    ).lock;
    const client = lock.client;
    const query = client.query.bind(client);
    let stalled = false;
    client.query = (q: unknown) => {
      const sent = query(q);
      if (!stalled && (q as { text?: string }).text === 'SELECT 1') {
        stalled = true;
        const until = Date.now() + 4_000; // past the heartbeat's 3 s deadline (the store's queryTimeoutMs)
        while (Date.now() < until); // the event loop blocked, the question sent
      }
      return sent;
    };
    const connections = relay.connections;
    await eventually(async () => assert.ok(stalled, 'a heartbeat was sent'), 10_000);
    await sleep(1_500); // the heartbeat's deadline passed during the block: whatever it decides is decided
    assert.equal(lock.held, true);
    assert.equal(relay.connections, connections, 'no new lock connection');
    assert.equal(await lockBackend('inv-8'), backend, 'the same session holds the lock');
    await holder.transition({ xid: mintXid('stalled'), branchId: 'db@inv-8-1' }, 'registered', {
      resource: 'db',
    });
  });

  it('takes its lock back from its own lost session, still open on the server, instead of taking it for a twin', async () => {
    // Silent both ways: the server keeps the old session (and the lock) while the holder counts the connection
    // lost. Taking the lock again, the holder meets its own session: it ends it, rather than refusing every write
    // from then on as if another process held its instance.
    const { holder, relay, backend: before } = await holderViaRelay('ghost', 'inv-6');
    relay.partition();
    const now = await eventually(async () => {
      const pid = await lockBackend('inv-6');
      assert.ok(pid !== undefined && pid !== before, `held again on a new connection (${before} → ${pid})`);
      return pid;
    }, 15_000);
    const key = { xid: mintXid('ghost'), branchId: 'db@inv-6' };
    assert.equal(
      (await holder.transition(key, 'registered', { resource: 'db' })).record.status,
      'registered',
    );
    await assert.rejects(storeOf('ghost').open({ instanceId: 'inv-6' }), FailedPreconditionError);
    assert.equal(await lockBackend('inv-6'), now, 'still the holder');
  });

  it("refuses a twin Participant at start(), before its recovery rolls back the live instance's branches", async () => {
    // Without the lock, the twin's start rolled back the live instance's registered branch as "work lost in a
    // restart", under the live call's feet.
    const resource = () =>
      defineResource<undefined>({
        name: 'db',
        prepare: async () => ({ vote: 'prepared' }),
        commit: async () => ({ committed: true }),
        rollback: async () => undefined,
      });
    const options = (store: PgBranchStore) => ({
      service: 'inventory',
      instanceId: 'inv-1',
      address: '127.0.0.1:5001',
      store,
      resources: [resource()],
      recoveryIntervalMs: 3_600_000,
    });
    const live = new Participant(options(storeOf('participants')));
    await live.start();
    try {
      const wire = {
        xid: mintXid('c1'),
        coordinatorAddress: '127.0.0.1:1',
        deadlineAtMs: Date.now() + 60_000,
      };
      await live.withBranch(wire, 'db', async () => undefined);
      const key = { xid: wire.xid, branchId: 'db@inv-1' };
      const statusOf = async () =>
        (await poolOf().query(`SELECT status FROM participants WHERE xid = $1`, [key.xid])).rows[0]?.status;
      assert.equal(await statusOf(), 'registered');

      // The twin's store is wrapped by ParticipantMetrics: the wrapper passes the owner on.
      const twin = new Participant(new ParticipantMetrics().instrument(options(storeOf('participants'))));
      try {
        await assert.rejects(
          twin.start(),
          refusedAsTwin(
            'participants',
            'inv-1',
            new RegExp(`application 'dmtp inventory/inv-1 pid ${process.pid}@`),
          ),
        );
      } finally {
        await twin.stop(); // had it started, its recovery timer would hold the test run open
      }
      assert.equal(await statusOf(), 'registered', "the live instance's branch is untouched");
      assert.equal((await live.prepare(key, 'db')).vote, 'prepared');
    } finally {
      await live.stop();
    }
  });

  it("refuses a twin's pgResource at start (a file store each): the live one's prepared transaction stays", async () => {
    // The window of a prepare: PREPARE TRANSACTION done, the "prepared" record not written yet. Without the lock,
    // the twin's start-up recovery found that transaction with no record in its own store, rolled it back as never
    // voted, and the live instance's COMMIT PREPARED later found nothing to commit (taken as done): half a
    // transaction committed.
    const dir = mkdtempSync(path.join(os.tmpdir(), 'pg-twin-'));
    const options = (store: string, o: { instanceLock?: boolean } = {}) => ({
      service: 'stock',
      instanceId: 'inv-1',
      address: '127.0.0.1:5001',
      store: new FileBranchStore({ path: path.join(dir, store) }),
      resources: [pgResource({ name: 'stock', pool: poolOf(), ...o })],
      recoveryIntervalMs: 3_600_000,
    });
    const live = new Participant(options('live.branches'));
    await live.start();
    const twin = new Participant(new ParticipantMetrics().instrument(options('twin.branches')));
    const gid = gidFor('dmtp_', { xid: mintXid('c1'), branchId: 'stock@inv-1' });
    try {
      const c = await poolOf().connect();
      try {
        await c.query(
          `BEGIN; CREATE TABLE IF NOT EXISTS stock (n int); INSERT INTO stock VALUES (1); PREPARE TRANSACTION '${gid}'`,
        );
      } finally {
        c.release();
      }
      await assert.rejects(twin.start(), (err: FailedPreconditionError) => {
        assert.ok(err instanceof FailedPreconditionError, String(err));
        assert.match(
          err.message,
          new RegExp(
            `^resource stock: instance 'inv-1' is already running against this database \\(held by PostgreSQL backend \\d+, application 'dmtp stock/inv-1 pid ${process.pid}@`,
          ),
        );
        assert.deepEqual(err.details, { resource: 'stock', instanceId: 'inv-1' });
        return true;
      });
      assert.deepEqual(
        await preparedGids(db.url),
        [gid],
        "the live instance's prepared transaction is untouched",
      );
      // The failed start let go of what it had opened: the twin's file store (its lock too) is free again.
      const reopened = new FileBranchStore({ path: path.join(dir, 'twin.branches') });
      await reopened.open();
      await reopened.close();
      // Turned off, the same twin starts, and its recovery does what the lock prevents (with no registry here to find
      // the coordinator, the transaction it has no record of is rolled back unasked).
      const unlocked = new Participant(options('unlocked.branches', { instanceLock: false }));
      await unlocked.start();
      await unlocked.stop();
      assert.deepEqual(await preparedGids(db.url), [], 'rolled back as never voted');
    } finally {
      await twin.stop();
      await live.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
