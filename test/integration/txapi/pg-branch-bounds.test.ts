// Where a PostgreSQL branch ends, for the work a business handler does: the branch's connection is reachable
// (`currentPg()`) only while the call runs — not from a timer or promise it leaves behind, which would write
// after a rollback or inside the next branch on that connection — and a session left idle in its transaction
// (a handler stuck after writing) is ended by PostgreSQL past the deadline, freeing its row locks. A participant
// with a pgResource (and a reservation resource), served with grpc-js, the stub coordinator, and a bank to call
// onward.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { status } from '@grpc/grpc-js';
import { Client, Pool } from 'pg';
import { DmtpError, FailedPreconditionError } from '../../../common';
import { Vote } from '../../../proto/gen/dmtp/v1/types';
import {
  createDmtp,
  currentPg,
  FileBranchStore,
  maybeBranch,
  participantMethods,
  Participant,
  pgResource,
  reservationResource,
  txGrpcInterceptor,
  txServerMiddleware,
  type Dmtp,
} from '../../../txapi';
import type { MethodEntry } from '../../../rpc/middleware';
import { BANK, balances, freePort, setupAccounts, startBank, type Bank } from '../../support/txapi-bank';
import {
  JsonClient,
  jsonMethod,
  participantClient,
  serveEntries,
  startStubCoordinator,
  type StubCoordinator,
} from '../../support/txapi-grpc';
import { createTestDb, preparedGids, type TestDb } from '../../support/txapi-pg';
import { waitFor } from '../../support/coordinator-wait';

const SHOP = {
  /** Writes `text` to notes; optionally calls onward, leaves a late write behind, or hangs after writing. */
  note: '/test.Shop/Note',
  /** Works on the 'seats' reservation resource, and asks for the pg client there. */
  seat: '/test.Shop/Seat',
  paths: [] as string[],
};
SHOP.paths = [SHOP.note, SHOP.seat];

interface NoteRequest {
  text: string;
  /** Debits alice in the same transaction (a row lock), as a stuck handler's work. */
  debitAlice?: boolean;
  /** Credits bob at the bank, awaited, then writes `<text> after onward`. */
  onward?: boolean;
  /** A setTimeout this long after the write that writes `late` through currentPg(). */
  lateMs?: number;
  /** Waits for the test's `unstick()` after writing (an external system that does not answer). */
  stuck?: boolean;
}

interface Shop {
  participant: Participant;
  pool: Pool;
  address: string;
  /** What each late write left behind came to: 'written', or the error. */
  late: Promise<unknown>[];
  /** Resolves once a stuck handler has written and waits. */
  stuckReached: Promise<void>;
  unstick(): void;
  stop(): Promise<void>;
}

const codeOf = (err: unknown) => (err as DmtpError).code;

describe('txapi pg branch bounds', function () {
  let dbA: TestDb;
  let dbB: TestDb;
  let coord: StubCoordinator;
  let dmtp: Dmtp;
  let dir: string;
  const started: { stop(): Promise<void> }[] = [];
  const clients: { close(): void }[] = [];

  before(async function () {
    dbA = await createTestDb(this, '_a');
    dbB = await createTestDb(this, '_b');
    const c = new Pool({ connectionString: dbA.url, max: 1 });
    await c.query('CREATE TABLE notes (text text NOT NULL)');
    await c.end();
  });
  after(async () => {
    await dbA?.drop();
    await dbB?.drop();
  });

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'dmtp-pg-bounds-'));
    await setupAccounts(dbA.url, { alice: 100 });
    await setupAccounts(dbB.url, { bob: 100 });
    const c = new Pool({ connectionString: dbA.url, max: 1 });
    await c.query('TRUNCATE notes');
    await c.end();
    coord = await startStubCoordinator();
    dmtp = createDmtp({ coordinator: { id: 'stub-coord', address: coord.address }, initiator: 'test' });
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const s of started.splice(0).reverse()) await s.stop();
    dmtp.close();
    await coord.stop();
    rmSync(dir, { recursive: true, force: true });
    assert.deepEqual(await preparedGids(dbA.url), [], 'no prepared transaction left in the shop');
    assert.deepEqual(await preparedGids(dbB.url), [], 'no prepared transaction left in the bank');
  });

  const client = (address: string, paths: string[]) => {
    const c = new JsonClient(address, paths, [txGrpcInterceptor]);
    clients.push(c);
    return c;
  };

  async function startShop(
    o: { poolSize?: number; deadlineGraceMs?: number; idleInTransactionGraceMs?: number; bank?: Bank } = {},
  ): Promise<Shop> {
    const pool = new Pool({ connectionString: dbA.url, max: o.poolSize ?? 4 });
    pool.on('error', () => undefined);
    const port = await freePort();
    const participant = new Participant({
      service: 'shop',
      instanceId: 'shop-1',
      address: `127.0.0.1:${port}`,
      store: new FileBranchStore({ path: join(dir, 'branches.log') }),
      resources: [
        pgResource({ name: 'notes', pool, idleInTransactionGraceMs: o.idleInTransactionGraceMs }),
        reservationResource({ name: 'seats', confirm: async () => undefined, cancel: async () => undefined }),
      ],
      resourceFor: (method) => (method === SHOP.seat ? 'seats' : 'notes'),
      deadlineGraceMs: o.deadlineGraceMs,
      recoveryIntervalMs: 60_000,
    });
    await participant.start();
    const late: Promise<unknown>[] = [];
    let unstick!: () => void;
    const stuck = new Promise<void>((resolve) => (unstick = resolve));
    let reached!: () => void;
    const stuckReached = new Promise<void>((resolve) => (reached = resolve));
    const bank = o.bank && client(o.bank.address, BANK.paths);
    const note = jsonMethod<NoteRequest, { ok: true }>(SHOP.note, async ({ request }) => {
      await currentPg().query('INSERT INTO notes VALUES ($1)', [request.text]);
      if (request.debitAlice)
        await currentPg().query(`UPDATE accounts SET balance = balance - 1 WHERE id = 'alice'`);
      if (request.onward) {
        await bank!.call(BANK.credit, { account: 'bob', amount: 5 });
        await sleep(20);
        assert.ok(maybeBranch(), 'the branch, after an awaited onward call and timer');
        await currentPg().query('INSERT INTO notes VALUES ($1)', [`${request.text} after onward`]);
      }
      if (request.lateMs !== undefined) {
        // A fire-and-forget audit row: it must not land outside the transaction, nor in another one.
        late.push(
          new Promise((resolve) =>
            setTimeout(() => {
              Promise.resolve()
                .then(() => currentPg().query(`INSERT INTO notes VALUES ('late')`))
                .then(() => resolve('written'), resolve);
            }, request.lateMs),
          ),
        );
      }
      if (request.stuck) {
        reached();
        await stuck;
      }
      return { ok: true };
    });
    const seat = jsonMethod<object, { ok: true }>(SHOP.seat, async () => {
      await currentPg().query('SELECT 1');
      return { ok: true };
    });
    const served = await serveEntries(
      [...participantMethods(participant), note as MethodEntry, seat as MethodEntry],
      [txServerMiddleware(participant)],
      port,
    );
    const shop: Shop = {
      participant,
      pool,
      address: served.address,
      late,
      stuckReached,
      unstick,
      stop: async () => {
        unstick();
        await served.stop();
        await participant.stop();
        await pool.end();
      },
    };
    started.push(shop);
    return shop;
  }

  const notes = async () => {
    const p = new Pool({ connectionString: dbA.url, max: 1 });
    try {
      return (await p.query<{ text: string }>('SELECT text FROM notes ORDER BY text')).rows.map(
        (r) => r.text,
      );
    } finally {
      await p.end();
    }
  };
  /** Sessions of the shop's database that sit idle inside a transaction. */
  const idleInTransaction = async () => {
    const c = new Client({ connectionString: dbA.url });
    await c.connect();
    try {
      const r = await c.query<{ n: string }>(
        `SELECT count(*) AS n FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'`,
      );
      return Number(r.rows[0].n);
    } finally {
      await c.end();
    }
  };
  const lateFailure = (err: unknown, xid: string) =>
    err instanceof FailedPreconditionError &&
    /branch notes@shop-1 of .*: the call that ran in this branch has ended; work started after it is outside the transaction/.test(
      err.message,
    ) &&
    err.details.xid === xid;

  it('refuses currentPg() to work a call left behind: it would write in autocommit after the rollback', async () => {
    const shop = await startShop();
    const shopClient = client(shop.address, SHOP.paths);
    let xid = '';
    await assert.rejects(
      dmtp.transaction(async (tx) => {
        xid = tx.xid;
        await shopClient.call(SHOP.note, { text: 'in the call', lateMs: 300 });
        throw new Error('changed my mind');
      }),
      /changed my mind/,
    );
    assert.equal(
      (await shop.participant.store.get({ xid, branchId: 'notes@shop-1' }))?.status,
      'rolled_back',
    );
    const late = await shop.late[0];
    assert.ok(lateFailure(late, xid), `the late write: ${String(late)}`);
    assert.deepEqual(await notes(), [], 'neither the call nor the late write is left');
  });

  it('refuses it inside the next branch on the same connection: the late write does not commit with it', async () => {
    const shop = await startShop({ poolSize: 1 });
    const shopClient = client(shop.address, SHOP.paths);
    let first = '';
    await assert.rejects(
      dmtp.transaction(async (tx) => {
        first = tx.xid;
        await shopClient.call(SHOP.note, { text: 'first', lateMs: 300 });
        throw new Error('changed my mind');
      }),
      /changed my mind/,
    );
    // The second transaction takes the pool's one connection and holds it open while the late write runs.
    await dmtp.transaction(async () => {
      await shopClient.call(SHOP.note, { text: 'second' });
      await shop.late[0];
    });
    assert.ok(lateFailure(await shop.late[0], first), `the late write: ${String(await shop.late[0])}`);
    assert.deepEqual(await notes(), ['second']);
  });

  it("keeps the branch for the handler's own awaited work and onward calls while the call runs", async () => {
    const bank = await startBank({ url: dbB.url, service: 'bank-b', instanceId: 'bank-b-1' });
    started.push(bank);
    const shop = await startShop({ bank });
    const shopClient = client(shop.address, SHOP.paths);
    await dmtp.transaction(async (tx) => {
      await shopClient.call(SHOP.note, { text: 'paid' });
      await shopClient.call(SHOP.note, { text: 'shipped', onward: true });
      assert.equal(tx.branches.length, 2, 'the shop and, through it, the bank');
    });
    assert.deepEqual(await notes(), ['paid', 'shipped', 'shipped after onward']);
    assert.deepEqual(await balances(dbB.url), { bob: 105 });
  });

  it('refuses currentPg() in a branch of another kind of resource, naming it', async () => {
    const shop = await startShop();
    const shopClient = client(shop.address, SHOP.paths);
    const tx = await dmtp.begin({ timeoutMs: 10_000 });
    const err = await tx.run(() => shopClient.call(SHOP.seat, {})).catch((e: unknown) => e);
    assert.equal(codeOf(err), status.FAILED_PRECONDITION, String(err));
    assert.match(
      String(err),
      /branch seats@shop-1 of .* is on resource 'seats', which is not a PostgreSQL resource/,
    );
    await tx.rollback();
  });

  it("ends a stuck handler's session past the deadline: its row locks are freed and nothing crashes", async () => {
    // The database's own bound, on its own: it ends the idle session (at the deadline + 200 ms) before the
    // participant abandons the handler (at the deadline + deadlineGraceMs), however the process fares.
    const shop = await startShop({ poolSize: 2, idleInTransactionGraceMs: 200 });
    const shopClient = client(shop.address, SHOP.paths);
    const tx = await dmtp.begin({ timeoutMs: 1_000 });
    const call = tx
      .run(() => shopClient.call(SHOP.note, { text: 'stuck', debitAlice: true, stuck: true }))
      .catch((e: unknown) => e);
    await shop.stuckReached; // it has debited alice: the row is locked from here
    const other = new Client({ connectionString: dbA.url });
    await other.connect();
    try {
      await other.query('SET lock_timeout = 500');
      await waitFor(
        'another writer to get the row',
        () =>
          other.query(`UPDATE accounts SET balance = balance + 1 WHERE id = 'alice'`).then(
            () => true,
            () => false,
          ),
        15_000,
      );
    } finally {
      await other.end();
    }
    assert.equal(codeOf(await call), status.DEADLINE_EXCEEDED, 'the caller gave up at the deadline');
    shop.unstick();
    const key = { xid: tx.xid, branchId: 'notes@shop-1' };
    await waitFor(
      'the branch to roll back',
      async () => (await shop.participant.store.get(key))?.status === 'rolled_back',
    );
    await waitFor('the ended session to leave the pool', () => shop.pool.totalCount === 0);
    await tx.rollback();
    assert.deepEqual(await balances(dbA.url), { alice: 101 }, 'the stuck debit undone, the other writer in');
    // The pool goes on with new connections.
    await dmtp.transaction(() => shopClient.call(SHOP.note, { text: 'after' }));
    assert.deepEqual(await notes(), ['after']);
  });

  it('votes ABORT for a branch left idle in its transaction past the deadline and the grace, dropping its connection', async () => {
    // The participant's own deadline rollback comes much later here: the database's bound acts first.
    const shop = await startShop({ deadlineGraceMs: 60_000, idleInTransactionGraceMs: 100 });
    const shopClient = client(shop.address, SHOP.paths);
    const tx = await dmtp.begin({ timeoutMs: 500 });
    await tx.run(() => shopClient.call(SHOP.note, { text: 'idle' }));
    assert.equal(shop.pool.totalCount, 1, 'the open branch holds a connection');
    await waitFor('PostgreSQL to end the idle session', async () => (await idleInTransaction()) === 0);
    const pc = participantClient(shop.address);
    clients.push(pc);
    const vote = await pc.prepare(tx.xid, 'notes@shop-1');
    assert.equal(vote.vote, Vote.VOTE_ABORT, vote.reason);
    assert.match(vote.reason, /^PostgreSQL: /);
    assert.equal(shop.pool.totalCount, 0, 'the ended connection was discarded, not pooled');
    await tx.rollback();
    assert.deepEqual(await notes(), []);
  });

  it('leaves a branch idle between its calls before the deadline alone, and a prepared one past it', async () => {
    const shop = await startShop({ poolSize: 1, idleInTransactionGraceMs: 100 });
    const shopClient = client(shop.address, SHOP.paths);
    const pc = participantClient(shop.address);
    clients.push(pc);
    const tx = await dmtp.begin({ timeoutMs: 2_000 });
    await tx.run(() => shopClient.call(SHOP.note, { text: 'one' }));
    await sleep(800); // idle far longer than the grace, well before the deadline
    await tx.run(() => shopClient.call(SHOP.note, { text: 'two' }));
    assert.equal((await pc.prepare(tx.xid, 'notes@shop-1')).vote, Vote.VOTE_PREPARED);
    await sleep(1_800); // past the deadline and the grace: a prepared transaction is in no session
    assert.equal(await idleInTransaction(), 0);
    assert.equal((await pc.commit(tx.xid, 'notes@shop-1')).committed, true);
    assert.deepEqual(await notes(), ['one', 'two']);
    // The connection that held it went back to the pool unharmed, its bound gone with the transaction.
    const pooled = await shop.pool.connect();
    try {
      assert.equal(
        (await pooled.query('SHOW idle_in_transaction_session_timeout')).rows[0]
          .idle_in_transaction_session_timeout,
        '0',
      );
    } finally {
      pooled.release();
    }
  });
});
