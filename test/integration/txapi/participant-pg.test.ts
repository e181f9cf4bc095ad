// The participant SDK with PostgreSQL as a real 2PC resource: two banks in two databases, an initiator, and the
// stub coordinator of test/support/txapi-grpc.ts (phase 1/2 and QueryOutcome over the real ParticipantService).
import { strict as assert } from 'node:assert';
import { Metadata, status } from '@grpc/grpc-js';
import { Client } from 'pg';
import { DmtpError, MD, mintXid } from '../../../common';
import { Outcome, Vote } from '../../../proto/gen/dmtp/v1/types';
import {
  createDmtp,
  pgResource,
  TransactionAbortedError,
  txGrpcInterceptor,
  type BranchRecord,
  type Dmtp,
} from '../../../txapi';
import { BANK, balances, setupAccounts, startBank, type Bank } from '../../support/txapi-bank';
import {
  JsonClient,
  participantClient,
  startStubCoordinator,
  type StubCoordinator,
} from '../../support/txapi-grpc';
import { createTestDb, preparedGids, type TestDb } from '../../support/txapi-pg';
import { waitFor } from '../../support/coordinator-wait';

describe('txapi participant on PostgreSQL', function () {
  let dbA: TestDb;
  let dbB: TestDb;
  let coord: StubCoordinator;
  let dmtp: Dmtp;
  const started: { stop(): Promise<void> }[] = [];
  const clients: { close(): void }[] = [];

  before(async function () {
    dbA = await createTestDb(this, '_a');
    dbB = await createTestDb(this, '_b');
  });
  after(async () => {
    await dbA?.drop();
    await dbB?.drop();
  });

  beforeEach(async () => {
    await setupAccounts(dbA.url, { alice: 100 });
    await setupAccounts(dbB.url, { bob: 100 });
    coord = await startStubCoordinator();
    dmtp = createDmtp({ coordinator: { id: 'stub-coord', address: coord.address }, initiator: 'test' });
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const s of started.splice(0).reverse()) await s.stop();
    dmtp.close();
    await coord.stop();
    assert.deepEqual(await preparedGids(dbA.url), [], 'no prepared transaction left in bank A');
    assert.deepEqual(await preparedGids(dbB.url), [], 'no prepared transaction left in bank B');
  });

  const bank = async (db: TestDb, service: string, extra: Partial<Parameters<typeof startBank>[0]> = {}) => {
    const b = await startBank({ url: db.url, service, instanceId: `${service}-1`, ...extra });
    started.push(b);
    return b;
  };
  const client = (b: Bank) => {
    const c = new JsonClient(b.address, BANK.paths, [txGrpcInterceptor]);
    clients.push(c);
    return c;
  };
  const pc = (b: Bank) => {
    const c = participantClient(b.address);
    clients.push(c);
    return c;
  };
  const codeOf = (err: unknown) => (err as DmtpError).code;

  it('commits a transfer across two databases: both applied, nothing left prepared', async () => {
    const [a, b] = [await bank(dbA, 'bank-a'), await bank(dbB, 'bank-b')];
    const xid = await dmtp.transaction(async (tx) => {
      await client(a).call(BANK.debit, { account: 'alice', amount: 30 });
      await client(b).call(BANK.credit, { account: 'bob', amount: 30 });
      assert.equal(tx.branches.length, 2);
      return tx.xid;
    });
    assert.deepEqual(await balances(dbA.url), { alice: 70 });
    assert.deepEqual(await balances(dbB.url), { bob: 130 });
    assert.equal(coord.outcomes.get(xid), Outcome.OUTCOME_COMMIT);
    assert.equal(
      (await a.participant.store.get({ xid, branchId: 'accounts@bank-a-1' }))?.status,
      'committed',
    );
  });

  it('commits a lone branch in one phase, through PREPARE TRANSACTION and COMMIT PREPARED', async () => {
    const a = await bank(dbA, 'bank-a');
    const xid = await dmtp.transaction(async (tx) => {
      await client(a).call(BANK.debit, { account: 'alice', amount: 4 });
      assert.equal(tx.branches.length, 1);
      return tx.xid;
    });
    assert.deepEqual(await balances(dbA.url), { alice: 96 });
    assert.equal(
      (await a.participant.store.get({ xid, branchId: 'accounts@bank-a-1' }))?.status,
      'committed',
    );
  });

  it('rolls back both databases when the block throws', async () => {
    const [a, b] = [await bank(dbA, 'bank-a'), await bank(dbB, 'bank-b')];
    await assert.rejects(
      dmtp.transaction(async () => {
        await client(a).call(BANK.debit, { account: 'alice', amount: 30 });
        await client(b).call(BANK.credit, { account: 'bob', amount: 30 });
        throw new Error('changed my mind');
      }),
      (err: Error & { xid?: string }) => err.message === 'changed my mind' && !!err.xid,
    );
    assert.deepEqual(await balances(dbA.url), { alice: 100 });
    assert.deepEqual(await balances(dbB.url), { bob: 100 });
    assert.equal(coord.rollbacks.length, 1);
  });

  it('records a rollback before prepare (null rollback): prepare then votes ABORT and the transaction aborts', async () => {
    const [a, b] = [await bank(dbA, 'bank-a'), await bank(dbB, 'bank-b')];
    const err = await dmtp
      .transaction(async (tx) => {
        await client(a).call(BANK.debit, { account: 'alice', amount: 30 });
        await client(b).call(BANK.credit, { account: 'bob', amount: 30 });
        await pc(b).rollback(tx.xid, 'accounts@bank-b-1', 'rolled back early');
      })
      .catch((e: unknown) => e);
    assert.ok(err instanceof TransactionAbortedError, String(err));
    assert.match(err.outcome.reason, /rolled back early/);
    assert.deepEqual(await balances(dbA.url), { alice: 100 });
    assert.deepEqual(await balances(dbB.url), { bob: 100 });
  });

  it('with savepointPerCall, undoes a failed later call alone and commits the rest of the branch', async () => {
    const [a, b] = [await bank(dbA, 'bank-a', { savepointPerCall: true }), await bank(dbB, 'bank-b')];
    const failures: unknown[] = [];
    const xid = await dmtp.transaction(async (tx) => {
      await client(a).call(BANK.debit, { account: 'alice', amount: 10 });
      // Debits 50 in the branch's transaction, then fails: the 50 must not stay.
      failures.push(
        await client(a)
          .call(BANK.debitThenFail, { account: 'alice', amount: 50 })
          .catch((e: unknown) => e),
      );
      // A PostgreSQL error (bigint out of range): without the savepoint, every later statement of the
      // transaction would be refused.
      failures.push(
        await client(a)
          .call(BANK.credit, { account: 'alice', amount: 2 ** 63 - 1 })
          .catch((e: unknown) => e),
      );
      await client(a).call(BANK.debit, { account: 'alice', amount: 5 });
      await client(b).call(BANK.credit, { account: 'bob', amount: 15 });
      return tx.xid;
    });
    assert.equal(failures.length, 2);
    assert.match(String(failures[0]), /refused after debiting alice/);
    assert.match(String(failures[1]), /out of range/);
    assert.deepEqual(await balances(dbA.url), { alice: 85 });
    assert.deepEqual(await balances(dbB.url), { bob: 115 });
    assert.equal(coord.outcomes.get(xid), Outcome.OUTCOME_COMMIT);
  });

  it('without savepointPerCall, a failed later call rolls its branch back and the transaction aborts', async () => {
    const a = await bank(dbA, 'bank-a');
    let xid = '';
    const err = await dmtp
      .transaction(async (tx) => {
        xid = tx.xid;
        await client(a).call(BANK.debit, { account: 'alice', amount: 10 });
        await client(a)
          .call(BANK.debitThenFail, { account: 'alice', amount: 50 })
          .catch(() => undefined);
        // The branch is rolled back: a further call on it is refused.
        const refused = await client(a)
          .call(BANK.debit, { account: 'alice', amount: 5 })
          .catch((e: unknown) => e);
        assert.equal(codeOf(refused), status.ABORTED);
      })
      .catch((e: unknown) => e);
    assert.ok(err instanceof TransactionAbortedError, `${err}`);
    const rec = await a.participant.store.get({ xid, branchId: 'accounts@bank-a-1' });
    assert.equal(rec?.status, 'rolled_back');
    assert.match(rec?.reason ?? '', /a later business call failed: refused after debiting alice/);
    assert.deepEqual(await balances(dbA.url), { alice: 100 });
  });

  it('refuses a late business call for a branch rolled back before it arrived', async () => {
    const a = await bank(dbA, 'bank-a');
    const tx = await dmtp.begin({ timeoutMs: 10_000 });
    await pc(a).rollback(tx.xid, 'accounts@bank-a-1', 'coordinator gave up');
    const err = await tx
      .run(() => client(a).call(BANK.debit, { account: 'alice', amount: 1 }))
      .catch((e: unknown) => e);
    assert.equal(codeOf(err), status.ABORTED);
    assert.deepEqual(await balances(dbA.url), { alice: 100 });
    assert.equal((await pc(a).prepare(tx.xid, 'accounts@bank-a-1')).vote, Vote.VOTE_ABORT);
    await tx.rollback();
  });

  it('commits a prepared branch at once while every pool connection waits on its locks', async () => {
    const a = await bank(dbA, 'bank-a', { poolSize: 2 });
    const first = await dmtp.begin({ timeoutMs: 10_000 });
    await first.run(() => client(a).call(BANK.debit, { account: 'alice', amount: 1 }));
    assert.equal((await pc(a).prepare(first.xid, 'accounts@bank-a-1')).vote, Vote.VOTE_PREPARED);
    // Two more debits of alice take both connections of the pool and queue, in this order, for the prepared
    // transaction's row lock.
    const lockWaits = async () => {
      const c = new Client({ connectionString: dbA.url });
      await c.connect();
      try {
        const r = await c.query<{ n: string }>(
          `SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`,
        );
        return Number(r.rows[0].n);
      } finally {
        await c.end();
      }
    };
    const [early, late] = [await dmtp.begin({ timeoutMs: 4_000 }), await dmtp.begin({ timeoutMs: 4_000 })];
    const debit = (tx: typeof early) =>
      tx.run(() => client(a).call(BANK.debit, { account: 'alice', amount: 1 })).catch((e: unknown) => e);
    const earlyCall = debit(early);
    await waitFor('the first debit to wait for the row', async () => (await lockWaits()) === 1);
    const lateCall = debit(late);
    await waitFor('the second debit to wait too', async () => (await lockWaits()) === 2);
    await pc(a).commit(first.xid, 'accounts@bank-a-1');
    // Committed while they waited, the row goes to one of them, which debits it: not always the first in line
    // (both re-read the row's new version under READ COMMITTED, and the one that runs first wins it). Had COMMIT
    // PREPARED queued for a pool connection, it would have run only once a waiting statement gave up, and the
    // first call to end would have been that failure.
    const calls = [
      { tx: early, call: earlyCall },
      { tx: late, call: lateCall },
    ];
    const winner = await Promise.race(calls.map((c) => c.call.then(() => c)));
    const other = calls.find((c) => c !== winner)!;
    assert.deepEqual(await winner.call, { balance: 98 });
    await winner.tx.rollback(); // the row goes to the other, which debits it too
    assert.deepEqual(await other.call, { balance: 98 });
    await other.tx.rollback();
    assert.deepEqual(await balances(dbA.url), { alice: 99 });
  });

  it('applies a duplicate commit once', async () => {
    const a = await bank(dbA, 'bank-a');
    const tx = await dmtp.begin({ timeoutMs: 10_000 });
    await tx.run(() => client(a).call(BANK.debit, { account: 'alice', amount: 10 }));
    const p = pc(a);
    assert.equal((await p.prepare(tx.xid, 'accounts@bank-a-1')).vote, Vote.VOTE_PREPARED);
    const acks = await Promise.all([
      p.commit(tx.xid, 'accounts@bank-a-1'),
      p.commit(tx.xid, 'accounts@bank-a-1'),
    ]);
    assert.deepEqual(
      acks.map((x) => x.committed),
      [true, true],
    );
    assert.equal((await p.commit(tx.xid, 'accounts@bank-a-1')).committed, true);
    assert.deepEqual(await balances(dbA.url), { alice: 90 });
  });

  it('recovers an in-doubt branch after a restart by asking the coordinator (commit)', async () => {
    const a1 = await bank(dbA, 'bank-a');
    const tx = await dmtp.begin({ timeoutMs: 10_000 });
    await tx.run(() => client(a1).call(BANK.debit, { account: 'alice', amount: 25 }));
    assert.equal((await pc(a1).prepare(tx.xid, 'accounts@bank-a-1')).vote, Vote.VOTE_PREPARED);
    await a1.stop(); // stops before phase 2: the branch stays prepared in PostgreSQL
    started.splice(started.indexOf(a1), 1);
    assert.deepEqual(await preparedGids(dbA.url), [`dmtp_${tx.xid}|accounts@bank-a-1`]);
    coord.outcomes.set(tx.xid, Outcome.OUTCOME_COMMIT);
    const a2 = await bank(dbA, 'bank-a'); // start() resolves in-doubt branches
    assert.ok(coord.queries.some((q) => q.xid === tx.xid && q.branchId === 'accounts@bank-a-1'));
    assert.deepEqual(await preparedGids(dbA.url), []);
    assert.deepEqual(await balances(dbA.url), { alice: 75 });
    assert.equal(
      (await a2.participant.store.get({ xid: tx.xid, branchId: 'accounts@bank-a-1' }))?.status,
      'committed',
    );
  });

  it('lets a second instance commit a branch the first prepared, while the outcome is pending', async () => {
    const a1 = await bank(dbA, 'bank-a');
    const tx = await dmtp.begin({ timeoutMs: 10_000 });
    await tx.run(() => client(a1).call(BANK.debit, { account: 'alice', amount: 5 }));
    await pc(a1).prepare(tx.xid, 'accounts@bank-a-1');
    await a1.stop();
    started.splice(started.indexOf(a1), 1);
    coord.outcomes.set(tx.xid, Outcome.OUTCOME_PENDING);
    const a2 = await bank(dbA, 'bank-a');
    const found = await a2.participant.resource('accounts')!.inDoubt!(0);
    assert.deepEqual(found, [{ xid: tx.xid, branchId: 'accounts@bank-a-1' }], 'still in pg_prepared_xacts');
    assert.equal((await pc(a2).commit(tx.xid, 'accounts@bank-a-1')).committed, true);
    assert.deepEqual(await balances(dbA.url), { alice: 95 });
  });

  it('rolls back an in-doubt branch the coordinator never decided (presumed abort)', async () => {
    const a1 = await bank(dbA, 'bank-a');
    const tx = await dmtp.begin({ timeoutMs: 10_000 });
    await tx.run(() => client(a1).call(BANK.debit, { account: 'alice', amount: 5 }));
    await pc(a1).prepare(tx.xid, 'accounts@bank-a-1');
    await a1.stop();
    started.splice(started.indexOf(a1), 1);
    await bank(dbA, 'bank-a');
    assert.deepEqual(await preparedGids(dbA.url), []);
    assert.deepEqual(await balances(dbA.url), { alice: 100 });
  });

  /** What a kill -9 between PREPARE TRANSACTION and the branch store's record leaves behind in bank-a's database. */
  const prepareOrphan = async (xid: string, branchId: string, work: string) => {
    const c = new Client({ connectionString: dbA.url });
    await c.connect();
    try {
      await c.query('BEGIN');
      await c.query(work);
      await c.query(`PREPARE TRANSACTION 'dmtp_${xid}|${branchId}'`);
    } finally {
      await c.end();
    }
  };

  it('rolls back a prepared transaction of its own that it never recorded (a crash between PREPARE and the record)', async () => {
    const a = await bank(dbA, 'bank-a');
    const mine = { xid: mintXid('stub-coord'), branchId: 'accounts@bank-a-1' };
    const theirs = { xid: mintXid('stub-coord'), branchId: 'accounts@bank-a-2' };
    await prepareOrphan(
      mine.xid,
      mine.branchId,
      `UPDATE accounts SET balance = balance - 7 WHERE id = 'alice'`,
    );
    await prepareOrphan(theirs.xid, theirs.branchId, `INSERT INTO accounts VALUES ('zed', 7)`);
    try {
      await a.participant.recoverNow(0);
      assert.deepEqual(
        await preparedGids(dbA.url),
        [`dmtp_${theirs.xid}|${theirs.branchId}`],
        "its own is rolled back; another instance's is left to that instance",
      );
      assert.deepEqual(await balances(dbA.url), { alice: 100 }, 'its work undone');
      const rec = await a.participant.store.get(mine);
      assert.equal(rec?.status, 'rolled_back');
      assert.match(rec?.reason ?? '', /never voted/);
      assert.ok(
        !coord.queries.some((q) => q.xid === mine.xid),
        'nobody could have decided it: nothing asked',
      );
    } finally {
      const c = new Client({ connectionString: dbA.url });
      await c.connect();
      await c.query(`ROLLBACK PREPARED 'dmtp_${theirs.xid}|${theirs.branchId}'`).catch(() => undefined);
      await c.end();
    }
  });

  it('asks the coordinator about an unrecorded prepared transaction of its own when it can find it (a twin may have voted it)', async () => {
    // A second process with this instance id and a store of its own (a copied configuration, while the instance
    // lock's connection was down) may have voted a transaction this process has no record of. Rolled back
    // unasked, its COMMIT PREPARED would later have found nothing to commit: half a transaction committed.
    let address: string | undefined; // the registry knows no coordinator for the owner at first
    const a = await bank(dbA, 'bank-a', { coordinatorAddressFor: async () => address });
    const voted = { xid: mintXid('stub-coord'), branchId: 'accounts@bank-a-1' };
    const never = { xid: mintXid('stub-coord'), branchId: 'accounts@bank-a-1' };
    const gid = (k: typeof voted) => `dmtp_${k.xid}|${k.branchId}`;
    await prepareOrphan(
      voted.xid,
      voted.branchId,
      `UPDATE accounts SET balance = balance - 7 WHERE id = 'alice'`,
    );
    await prepareOrphan(never.xid, never.branchId, `INSERT INTO accounts VALUES ('yan', 3)`);
    coord.outcomes.set(voted.xid, Outcome.OUTCOME_PENDING);

    await a.participant.recoverNow(0);
    const both = [gid(voted), gid(never)].sort();
    assert.deepEqual((await preparedGids(dbA.url)).sort(), both, 'no coordinator found: both kept');
    address = '127.0.0.1:1'; // found, but nothing listens there
    await a.participant.recoverNow(0);
    assert.deepEqual((await preparedGids(dbA.url)).sort(), both, 'unreachable: both kept');

    address = coord.address;
    await a.participant.recoverNow(0);
    assert.deepEqual(await preparedGids(dbA.url), [gid(voted)], 'PENDING kept; ABORT (presumed) rolled back');
    assert.deepEqual(
      coord.queries.map((q) => q.xid).sort(),
      [voted.xid, never.xid].sort(),
      'both asked, once',
    );
    const rec = await a.participant.store.get(never);
    assert.equal(rec?.status, 'rolled_back');
    assert.match(rec?.reason ?? '', /never voted .*the coordinator reports abort/);

    coord.outcomes.set(voted.xid, Outcome.OUTCOME_COMMIT);
    await a.participant.recoverNow(0);
    assert.deepEqual(await preparedGids(dbA.url), []);
    assert.deepEqual(await balances(dbA.url), { alice: 93 }, 'the voted one committed, the other undone');
  });

  it('finishes a prepared transaction whose record is already final, as the record says, asking nobody', async () => {
    // Before, a Rollback recorded for a branch whose unvoted prepared transaction a restart had failed to roll
    // back (one transient error) left that prepared transaction — and its row locks — for good: every recovery
    // round saw the record 'rolled_back' and moved on.
    const a = await bank(dbA, 'bank-a');
    const mine = { xid: mintXid('stub-coord'), branchId: 'accounts@bank-a-1' };
    await prepareOrphan(
      mine.xid,
      mine.branchId,
      `UPDATE accounts SET balance = balance - 7 WHERE id = 'alice'`,
    );
    await a.participant.rollback(mine, 'accounts', 'prepare timed out'); // the coordinator's phase-2 Rollback
    assert.equal((await a.participant.store.get(mine))?.status, 'rolled_back');
    assert.equal((await preparedGids(dbA.url)).length, 1, 'the record alone changed');
    await a.participant.recoverNow(0);
    assert.deepEqual(await preparedGids(dbA.url), []);
    assert.deepEqual(await balances(dbA.url), { alice: 100 }, 'its work undone, its locks gone');
    assert.ok(!coord.queries.some((q) => q.xid === mine.xid), 'the record decided: nothing asked');
  });

  it('leaves an in-doubt branch of a resource it does not have to its owner (a shared store)', async () => {
    const a = await bank(dbA, 'bank-a');
    const key = { xid: mintXid('stub-coord'), branchId: 'ledger@other-service-1' };
    const enlist = {
      resource: 'ledger',
      coordinatorAddress: coord.address,
      deadlineAtMs: Date.now() + 60_000,
    };
    await a.participant.store.transition(key, 'registered', enlist);
    await a.participant.store.transition(key, 'prepared');
    await a.participant.recoverNow(0);
    assert.equal(
      (await a.participant.store.get(key))?.status,
      'prepared',
      'no outcome recorded without the resource acting on it',
    );
    await a.participant.store.transition(key, 'rolled_back', { reason: 'test cleanup' });
  });

  it('rolls back a branch never prepared by its deadline and releases its connection', async () => {
    const a = await bank(dbA, 'bank-a', { deadlineGraceMs: 0 });
    const tx = await dmtp.begin({ timeoutMs: 300 });
    await tx.run(() => client(a).call(BANK.debit, { account: 'alice', amount: 5 }));
    assert.equal(a.pool.totalCount - a.pool.idleCount, 1, 'the open branch holds a connection');
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(
      (await a.participant.store.get({ xid: tx.xid, branchId: 'accounts@bank-a-1' }))?.status,
      'rolled_back',
    );
    assert.equal(a.pool.totalCount - a.pool.idleCount, 0);
    assert.equal((await pc(a).prepare(tx.xid, 'accounts@bank-a-1')).vote, Vote.VOTE_ABORT);
    await tx.rollback();
  });

  it('answers bad input with clear statuses and changes nothing', async () => {
    const a = await bank(dbA, 'bank-a');
    const plain = new JsonClient(a.address, BANK.paths);
    clients.push(plain);
    const withCtx = (xid: string, deadline: number) => {
      const md = new Metadata();
      md.set(MD.xid, xid);
      md.set(MD.coordinator, coord.address);
      md.set(MD.deadline, String(deadline));
      return md;
    };
    const debit = (md: Metadata) =>
      plain.call(BANK.debit, { account: 'alice', amount: 1 }, md).catch((e) => e);
    assert.equal(
      codeOf(await debit(withCtx("x'; DROP TABLE accounts; --", Date.now() + 5_000))),
      status.INVALID_ARGUMENT,
    );
    assert.equal(
      codeOf(await debit(withCtx(mintXid('c'), Date.now() + 86_400_000))),
      status.INVALID_ARGUMENT,
    );
    assert.equal(
      codeOf(await debit(withCtx(mintXid('c', Date.now() - 5_000), Date.now() - 1))),
      status.FAILED_PRECONDITION,
    );
    const p = pc(a);
    assert.deepEqual(await p.prepare(mintXid('c'), 'accounts@bank-a-1'), {
      vote: Vote.VOTE_ABORT,
      reason: 'prepare for an unknown branch (never enlisted here, or its work was lost)',
    });
    assert.equal(codeOf(await p.commit(mintXid('c'), 'accounts@bank-a-1').catch((e) => e)), status.NOT_FOUND);
    // Another instance's branch (or a resource it lacks), unknown here: it reached the wrong address. Nothing is
    // answered for it (no "finished long ago", no one-phase "not committed", no vote, no null rollback) and
    // nothing recorded: UNAVAILABLE (asked again, elsewhere), or NOT_FOUND for a rollback.
    const foreign = mintXid('c');
    for (const branchId of ['accounts@bank-a-2', 'ledger@bank-a-1']) {
      for (const [misdirected, code] of [
        [await p.commit(foreign, branchId).catch((e: unknown) => e), status.UNAVAILABLE],
        [await p.commit(foreign, branchId, true).catch((e: unknown) => e), status.UNAVAILABLE],
        [await p.prepare(foreign, branchId).catch((e: unknown) => e), status.UNAVAILABLE],
        [await p.rollback(foreign, branchId).catch((e: unknown) => e), status.NOT_FOUND],
      ] as const) {
        assert.equal(codeOf(misdirected), code, String(misdirected));
        assert.match(String(misdirected), /not of this instance \(bank-a-1\): wrong address/);
      }
      assert.equal(await a.participant.store.get({ xid: foreign, branchId }), undefined);
    }
    assert.equal(
      codeOf(await p.prepare('forged', 'accounts@bank-a-1').catch((e) => e)),
      status.INVALID_ARGUMENT,
    );
    assert.equal(codeOf(await p.rollback(mintXid('c'), "b'x").catch((e) => e)), status.INVALID_ARGUMENT);
    // A rollback's reason off the wire is kept bounded (it is recorded, and told again by a later Prepare).
    const huge = { xid: mintXid('c'), branchId: 'accounts@bank-a-1' };
    await p.rollback(huge.xid, huge.branchId, 'r'.repeat(100_000));
    assert.equal((await a.participant.store.get(huge))?.reason.length, 1_001);
    assert.deepEqual(await balances(dbA.url), { alice: 100 });
  });

  it('rolls back a branch whose gid PostgreSQL would refuse: nothing can be prepared under it, so nothing to do', async () => {
    // Before, the rollback formed the gid again and failed for good: the branch, refused at its first call, stayed
    // open, and its deadline rollback, Prepare, Rollback and stop() failed UNAVAILABLE round after round.
    const res = pgResource({
      name: 'inventory_reservations',
      connectionString: dbA.url,
      gidPrefix: 'g'.repeat(20),
    });
    try {
      const rec: BranchRecord = {
        xid: `${'c'.repeat(64)}:${Date.now().toString(36).padStart(12, '0')}:${'a'.repeat(24)}`,
        branchId: `inventory_reservations@${'i'.repeat(64)}`,
        resource: 'inventory_reservations',
        status: 'registered',
        coordinatorAddress: coord.address,
        deadlineAtMs: Date.now() + 5_000,
        data: {},
        reason: '',
        createdAtMs: Date.now(),
        updatedAtMs: Date.now(),
      };
      await assert.rejects(res.begin!(rec), /makes no valid gid/);
      await res.rollback(rec, undefined);
      await res.rollback({ ...rec, status: 'prepared' }, undefined);
    } finally {
      await res.stop?.();
    }
  });
});
