// A business handler that writes a row and then waits on something that never answers, against real PostgreSQL:
// at the deadline plus deadlineGraceMs (or once stop() waited stopGraceMs) the participant abandons it, the
// coordinator's Rollback of the branch is answered, the branch's connection is closed — which ends its transaction
// and frees the row — and stop() returns. PostgreSQL's own idle bound is set far off here, so what frees the row is
// the participant. A participant with a pgResource, served with grpc-js, the stub coordinator.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { Client, Pool } from 'pg';
import type { DmtpError } from '../../../common';
import { Vote } from '../../../proto/gen/dmtp/v1/types';
import {
  createDmtp,
  currentPg,
  FileBranchStore,
  participantMethods,
  Participant,
  pgResource,
  txGrpcInterceptor,
  txServerMiddleware,
  type Dmtp,
} from '../../../txapi';
import type { MethodEntry } from '../../../rpc/middleware';
import { within } from '../../support/coordinator-wait';
import { balances, freePort, setupAccounts } from '../../support/txapi-bank';
import {
  JsonClient,
  participantClient,
  jsonMethod,
  serveEntries,
  startStubCoordinator,
  type StubCoordinator,
} from '../../support/txapi-grpc';
import { createTestDb, preparedGids, type TestDb } from '../../support/txapi-pg';

const DEBIT_AND_HANG = '/test.Shop/DebitAndHang';

interface Shop {
  participant: Participant;
  pool: Pool;
  address: string;
  /** Resolves once the handler has debited alice (her row is locked from then) and waits. */
  stuckReached: Promise<void>;
  /** Stops what is still running (the participant, if the test did not), idempotent. */
  stop(): Promise<void>;
}

describe('txapi participant: a stuck business call on PostgreSQL is abandoned', function () {
  let db: TestDb;
  let coord: StubCoordinator;
  let dmtp: Dmtp;
  let dir: string;
  const started: Shop[] = [];
  const clients: { close(): void }[] = [];

  before(async function () {
    db = await createTestDb(this);
  });
  after(async () => {
    await db?.drop();
  });

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'dmtp-abandoned-pg-'));
    await setupAccounts(db.url, { alice: 100 });
    coord = await startStubCoordinator();
    dmtp = createDmtp({ coordinator: { id: 'stub-coord', address: coord.address }, initiator: 'test' });
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const s of started.splice(0).reverse()) await s.stop();
    dmtp.close();
    await coord.stop();
    rmSync(dir, { recursive: true, force: true });
    assert.deepEqual(await preparedGids(db.url), [], 'no prepared transaction left');
  });

  async function startShop(o: {
    deadlineGraceMs?: number;
    stopGraceMs?: number;
    /** Stuck in a statement (a running pg_sleep) rather than in an await outside the database. */
    midStatement?: boolean;
  }): Promise<Shop> {
    const pool = new Pool({ connectionString: db.url, max: 2 });
    pool.on('error', () => undefined);
    const port = await freePort();
    const participant = new Participant({
      service: 'shop',
      instanceId: 'shop-1',
      address: `127.0.0.1:${port}`,
      store: new FileBranchStore({ path: join(dir, 'branches.log') }),
      // PostgreSQL's idle bound far off: only the participant can free the row within the test.
      resources: [pgResource({ name: 'accounts', pool, idleInTransactionGraceMs: 600_000 })],
      deadlineGraceMs: o.deadlineGraceMs,
      stopGraceMs: o.stopGraceMs,
      recoveryIntervalMs: 60_000,
    });
    await participant.start();
    let reached!: () => void;
    const stuckReached = new Promise<void>((resolve) => (reached = resolve));
    const debitAndHang = jsonMethod<object, { ok: true }>(DEBIT_AND_HANG, async () => {
      await currentPg().query(`UPDATE accounts SET balance = balance - 1 WHERE id = 'alice'`);
      reached();
      if (o.midStatement) await currentPg().query('SELECT pg_sleep(120)'); // a statement that runs on and on
      await new Promise<never>(() => undefined); // an external system that never answers, with no timeout
      return { ok: true };
    });
    const served = await serveEntries(
      [...participantMethods(participant), debitAndHang as MethodEntry],
      [txServerMiddleware(participant)],
      port,
    );
    const shop: Shop = {
      participant,
      pool,
      address: served.address,
      stuckReached,
      stop: async () => {
        await served.stop();
        await participant.stop();
        await pool.end();
      },
    };
    started.push(shop);
    return shop;
  }

  const client = <T extends { close(): void }>(c: T): T => (clients.push(c), c);

  /** Another session takes alice's row (waiting for its lock at most `lockTimeoutMs`). */
  const updateAlice = async (lockTimeoutMs: number) => {
    const other = new Client({ connectionString: db.url });
    await other.connect();
    try {
      await other.query(`SET lock_timeout = ${lockTimeoutMs}`);
      await other.query(`UPDATE accounts SET balance = balance + 1 WHERE id = 'alice'`);
    } finally {
      await other.end();
    }
  };

  it("answers the coordinator's Rollback at the deadline plus grace, frees the row, and stops", async () => {
    const shop = await startShop({ deadlineGraceMs: 300 });
    const shopClient = client(new JsonClient(shop.address, [DEBIT_AND_HANG], [txGrpcInterceptor]));
    const pc = client(participantClient(shop.address));
    const tx = await dmtp.begin({ timeoutMs: 1_000 });
    const call = tx.run(() => shopClient.call(DEBIT_AND_HANG, {})).catch((e: unknown) => e);
    await shop.stuckReached;
    await assert.rejects(updateAlice(100), /lock timeout/, 'the stuck branch holds the row');
    // The coordinator rolls the transaction back (its branch never reported: the call did not answer). Its
    // Rollback waits behind the stuck call until the participant abandons it.
    await pc.rollback(tx.xid, 'accounts@shop-1', 'transaction timed out');
    const key = { xid: tx.xid, branchId: 'accounts@shop-1' };
    assert.equal((await shop.participant.store.get(key))?.status, 'rolled_back');
    await updateAlice(2_000); // the closed session's transaction is gone, and its lock with it
    assert.equal(shop.pool.totalCount, 0, 'the connection the handler may still use was closed, not pooled');
    const vote = await pc.prepare(tx.xid, 'accounts@shop-1');
    assert.equal(vote.vote, Vote.VOTE_ABORT);
    assert.match(vote.reason, /abandoned/);
    assert.equal(
      ((await call) as DmtpError).code,
      status.DEADLINE_EXCEEDED,
      'the caller gave up at its deadline',
    );
    await tx.rollback();
    await within(shop.participant.stop(), 'stop', 5_000);
    assert.deepEqual(await balances(db.url), { alice: 101 }, 'the stuck debit undone, the other writer in');
  });

  it('stop() abandons a stuck call after stopGraceMs, rolls its branch back and returns', async () => {
    const shop = await startShop({ stopGraceMs: 300 });
    const shopClient = client(new JsonClient(shop.address, [DEBIT_AND_HANG], [txGrpcInterceptor]));
    const tx = await dmtp.begin({ timeoutMs: 60_000 }); // its deadline far off: only stop can end the call
    const call = tx
      .run(() => shopClient.call(DEBIT_AND_HANG, {}, undefined, 30_000))
      .catch((e: unknown) => e);
    await shop.stuckReached;
    await within(shop.participant.stop(), 'stop with a stuck call', 5_000);
    const err = (await within(call, 'the stuck call to be answered', 5_000)) as DmtpError;
    assert.equal(err.code, status.ABORTED, String(err));
    assert.match(err.message, /abandoned, still running when the participant stopped/);
    await updateAlice(2_000);
    assert.equal(shop.pool.totalCount, 0);
    await tx.rollback();
    assert.deepEqual(await balances(db.url), { alice: 101 });
  });

  it('stop() ends the session of a call stuck mid-statement, so its row locks go at once', async () => {
    const shop = await startShop({ stopGraceMs: 300, midStatement: true });
    const shopClient = client(new JsonClient(shop.address, [DEBIT_AND_HANG], [txGrpcInterceptor]));
    const tx = await dmtp.begin({ timeoutMs: 60_000 }); // its statement_timeout is a minute away
    const call = tx
      .run(() => shopClient.call(DEBIT_AND_HANG, {}, undefined, 30_000))
      .catch((e: unknown) => e);
    await shop.stuckReached;
    await within(shop.participant.stop(), 'stop with a call stuck in pg_sleep', 5_000);
    assert.equal(((await within(call, 'the stuck call', 5_000)) as DmtpError).code, status.ABORTED);
    // Closing the client alone left the backend running pg_sleep, holding alice's row until the statement ended.
    await updateAlice(3_000);
    await tx.rollback();
    assert.deepEqual(await balances(db.url), { alice: 101 });
  });
});
