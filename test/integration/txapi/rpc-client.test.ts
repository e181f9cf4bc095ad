// A transaction whose business calls go through rpc's client with txClientMiddleware — the way an application
// calls its participants (examples/order.ts) — against two participant services found in the registry by name,
// each in its own PostgreSQL database, with the real coordinator. On both transports the client may take (the
// multiplexed stream the servers advertise, and plain unary): a commit is applied in both databases; an abort —
// a business call that fails, a branch that votes ABORT at prepare, a block that throws — in neither.
import { strict as assert } from 'node:assert';
import { setTimeout as sleep } from 'node:timers/promises';
import { Etcd3 } from 'etcd3';
import { Metadata } from '@grpc/grpc-js';
import { Pool } from 'pg';
import { FailedPreconditionError } from '../../../common';
import { Coordinator } from '../../../coordinator';
import { ParticipantService } from '../../../proto';
import { EtcdRegistry } from '../../../registry';
import { client, startServer, UnaryTransport, type ClientOptions, type RpcServer } from '../../../rpc';
import {
  createDmtp,
  currentBranch,
  currentPg,
  Participant,
  participantHandlers,
  PgBranchStore,
  pgResource,
  TransactionAbortedError,
  txClientMiddleware,
  txServerMiddleware,
  type Dmtp,
} from '../../../txapi';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { freePort } from '../../support/txapi-bank';
import { BANK_DEFINITION, BANK_SCHEMA, type TransferMove } from '../../support/txapi-bank-main';
import { createTestDb, preparedGids, type TestDb } from '../../support/txapi-pg';

const START = 1_000;
const ACCOUNTS = 10;

interface Bank {
  db: TestDb;
  pool: Pool;
  stop(): Promise<void>;
}

type BankClient = ReturnType<typeof client<typeof BANK_DEFINITION>>;

/**
 * A participant service: registers as `service`, serves Prepare/Commit/Rollback and Debit/Credit. A move with
 * `onward` credits that account through `onward()` (bank-a: at bank-b, bank-b: back at bank-a) from inside the
 * handler (an onward call in the transaction), awaited or not.
 */
async function startBank(
  service: string,
  db: TestDb,
  registry: EtcdRegistry,
  onward?: () => BankClient,
): Promise<Bank> {
  const pool = new Pool({ connectionString: db.url, max: 8 });
  const storePool = new Pool({ connectionString: db.url, max: 2 });
  await pool.query(BANK_SCHEMA);
  for (let i = 0; i < ACCOUNTS; i++)
    await pool.query('INSERT INTO accounts VALUES ($1, $2)', [`a${i}`, START]);
  const port = await freePort();
  const participant = new Participant({
    service,
    instanceId: `${service}-1`,
    address: `127.0.0.1:${port}`,
    store: new PgBranchStore({ pool: storePool }),
    resources: [pgResource({ name: 'accounts', pool })],
    deadlineGraceMs: 200,
  });
  await participant.start();
  const move =
    (sign: 1 | -1) =>
    async ({ request }: { request: TransferMove }) => {
      const pg = currentPg();
      const { xid } = currentBranch();
      const r = await pg.query<{ balance: string }>(
        'UPDATE accounts SET balance = balance + $2 WHERE id = $1 AND balance + $2 >= 0 RETURNING balance',
        [request.account, sign * request.amount],
      );
      if (r.rowCount === 0) throw new FailedPreconditionError(`insufficient funds in ${request.account}`);
      await pg.query('INSERT INTO ledger VALUES ($1, $2, $3)', [xid, request.account, sign * request.amount]);
      if (request.poison) await pg.query('INSERT INTO poison VALUES ($1)', [xid]);
      if (request.onward) {
        const credited = onward!().credit({
          account: request.onward,
          amount: request.amount,
          onward: request.back,
        });
        if (request.onwardUnawaited) credited.catch(() => undefined);
        else await credited;
        if (request.failAfterOnward)
          throw new FailedPreconditionError(`transfer to ${request.onward} refused after the credit`);
      }
      if (request.slowMs) await sleep(request.slowMs);
      return { balance: Number(r.rows[0].balance) };
    };
  const server: RpcServer = await startServer({
    port,
    registry,
    instance: { instanceId: `${service}-1` },
    middleware: [txServerMiddleware(participant)],
    services: [
      { name: service, definition: ParticipantService, handlers: participantHandlers(participant) },
      { name: service, definition: BANK_DEFINITION, handlers: { debit: move(-1), credit: move(1) } },
    ],
  });
  return {
    db,
    pool,
    stop: async () => {
      await server.stop();
      await participant.stop();
      await pool.end();
      await storePool.end();
    },
  };
}

async function balances(pool: Pool): Promise<Record<string, number>> {
  const r = await pool.query<{ id: string; balance: string }>('SELECT id, balance FROM accounts ORDER BY id');
  return Object.fromEntries(r.rows.map((x) => [x.id, Number(x.balance)]));
}

async function ledgerXids(pool: Pool): Promise<Set<string>> {
  const r = await pool.query<{ xid: string }>('SELECT DISTINCT xid FROM ledger');
  return new Set(r.rows.map((x) => x.xid));
}

/** Waits until no branch is prepared or open in either database (phase 2 and deadline rollbacks done). */
async function settled(banks: Bank[]): Promise<void> {
  const by = Date.now() + 15_000;
  for (;;) {
    let open = 0;
    for (const b of banks) {
      open += (await preparedGids(b.db.url)).length;
      const r = await b.pool.query<{ n: string }>(
        `SELECT count(*) AS n FROM dmtp_branches WHERE status IN ('registered', 'prepared')`,
      );
      open += Number(r.rows[0].n);
    }
    if (open === 0) return;
    assert.ok(Date.now() < by, `${open} branches still prepared or open after 15 s`);
    await sleep(100);
  }
}

for (const transport of ['mux', 'unary'] as const) {
  describe(`txapi through rpc's client and txClientMiddleware (${transport})`, function () {
    this.timeout(60_000);
    let prefix: string;
    let registry: EtcdRegistry;
    let coordinator: Coordinator;
    let dmtp: Dmtp;
    const banks: Bank[] = [];
    let a: ReturnType<typeof bankClient>;
    let b: ReturnType<typeof bankClient>;

    let onwardClient: BankClient | undefined;
    let backClient: BankClient | undefined;
    const bankClient = (service: string) => {
      const options: ClientOptions = { middleware: [txClientMiddleware], timeoutMs: 3_000 };
      if (transport === 'unary') options.transportFactory = (i) => new UnaryTransport(i.address);
      return client(registry, service, BANK_DEFINITION, options);
    };

    before(async function () {
      const name = nameFor(this, 30);
      prefix = `/t/${name}`;
      registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
      coordinator = new Coordinator({
        id: name.replace(/[^A-Za-z0-9._-]/g, '-'),
        etcd: { endpoints: ETCD_ENDPOINTS, prefix },
      });
      const address = await coordinator.start();
      dmtp = createDmtp({ coordinator: { id: coordinator.id, address }, commitTimeoutMs: 8_000 });
      banks.push(
        await startBank(
          'bank-a',
          await createTestDb(this, '_a'),
          registry,
          () => (onwardClient ??= bankClient('bank-b')),
        ),
        await startBank(
          'bank-b',
          await createTestDb(this, '_b'),
          registry,
          () => (backClient ??= bankClient('bank-a')),
        ),
      );
      a = bankClient('bank-a');
      b = bankClient('bank-b');
      await a.ready();
      assert.equal(a.instances()[0]?.metadata.mux, '1', 'the server advertises the multiplexed path');
    });

    after(async () => {
      await a?.close();
      await b?.close();
      await onwardClient?.close();
      await backClient?.close();
      dmtp?.close();
      for (const bank of banks.splice(0)) {
        await bank.stop();
        await bank.db.drop();
      }
      await coordinator?.stop();
      await registry?.close();
      const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
      await etcd.delete().prefix(prefix);
      etcd.close();
    });

    const transferWith = (metadata: Metadata) =>
      dmtp.transaction(async () => {
        await a.debit({ account: 'a6', amount: 1 }, { metadata });
        await b.credit({ account: 'a6', amount: 1 }, { metadata });
      });

    const transfer = (amount: number, to = 'a1', poison = false) =>
      dmtp.transaction(
        async (tx) => {
          await a.debit({ account: 'a0', amount });
          await b.credit({ account: to, amount, poison });
          return tx;
        },
        { timeoutMs: 5_000 },
      );

    it('commits: both calls enlist through their trailers and both databases change', async () => {
      const before = [await balances(banks[0].pool), await balances(banks[1].pool)];
      const tx = await transfer(10);
      assert.deepEqual(
        tx.branches.map((br) => br.service).sort(),
        ['bank-a', 'bank-b'],
        'one branch per participant, reported by the calls',
      );
      assert.deepEqual(tx.outcome, { status: 'committed' });
      await settled(banks);
      assert.equal((await balances(banks[0].pool)).a0, before[0].a0 - 10);
      assert.equal((await balances(banks[1].pool)).a1, before[1].a1 + 10);
      assert.ok((await ledgerXids(banks[0].pool)).has(tx.xid));
      assert.ok((await ledgerXids(banks[1].pool)).has(tx.xid));
    });

    for (const unawaited of [false, true]) {
      it(`a participant's onward call${unawaited ? ' that its handler did not await' : ''} reaches Commit through the participant's answer`, async () => {
        // Before, the two branches of bank-a's answer (its own and bank-b's) arrived as one joined trailer the
        // initiator could not read: it collected none, "committed" nothing, and both rolled back at the deadline.
        const before = [await balances(banks[0].pool), await balances(banks[1].pool)];
        const tx = await dmtp.transaction(
          async (t) => {
            await a.debit({ account: 'a4', amount: 3, onward: 'a5', onwardUnawaited: unawaited });
            return t;
          },
          { timeoutMs: 5_000 },
        );
        assert.deepEqual(tx.outcome, { status: 'committed' });
        assert.deepEqual(tx.branches.map((br) => br.service).sort(), ['bank-a', 'bank-b']);
        await settled(banks);
        assert.equal((await balances(banks[0].pool)).a4, before[0].a4 - 3);
        assert.equal((await balances(banks[1].pool)).a5, before[1].a5 + 3);
        assert.ok((await ledgerXids(banks[1].pool)).has(tx.xid));
      });
    }

    /** bank-a debits a2 and credits a3 at bank-b through its onward call, then fails: the block catches it. */
    const failingTransfer = () =>
      a.debit({ account: 'a2', amount: 5, onward: 'a3', failAfterOnward: true }).then(
        () => assert.fail('the failing handler answered OK'),
        (e: unknown) => assert.ok(e instanceof FailedPreconditionError, String(e)),
      );

    for (const first of [true, false]) {
      it(`rolls back when a handler failed after its onward call worked in a branch the transaction ${first ? 'already held' : 'holds later'}`, async () => {
        // Before, the failed call's error answer said nothing of its onward call: bank-a undid its debit, bank-b's
        // branch kept the credit, and a transaction holding that branch (another call's) committed half the move.
        await settled(banks);
        const before = [await balances(banks[0].pool), await balances(banks[1].pool)];
        await assert.rejects(
          dmtp.transaction(
            async () => {
              if (first) await b.credit({ account: 'a4', amount: 1 });
              await failingTransfer();
              if (!first) await b.credit({ account: 'a4', amount: 1 });
            },
            { timeoutMs: 5_000 },
          ),
          (e: Error) => {
            assert.ok(e instanceof TransactionAbortedError, String(e));
            assert.match(e.message, /\/test\.Bank\/Debit failed .* sits in branch accounts@bank-b-1/);
            return true;
          },
        );
        await settled(banks);
        assert.deepEqual([await balances(banks[0].pool), await balances(banks[1].pool)], before);
      });
    }

    it("outcomeOf: 'pending' for this client's running transaction; asked from elsewhere, it is aborted and stays so", async () => {
      // Before, outcomeOf answered 'aborted' for a transaction still running here (the coordinator had not heard
      // of it: presumed abort), and the same transaction then committed.
      await settled(banks);
      const before = [await balances(banks[0].pool), await balances(banks[1].pool)];
      const tx = await dmtp.begin({ timeoutMs: 10_000 });
      await tx.run(() => a.debit({ account: 'a5', amount: 2 }));
      assert.deepEqual(await dmtp.outcomeOf(tx.xid), { status: 'pending' });
      const monitor = createDmtp({ coordinator: { id: coordinator.id, address: coordinator.address! } });
      try {
        assert.equal((await monitor.outcomeOf(tx.xid)).status, 'aborted');
      } finally {
        monitor.close();
      }
      await tx.run(() => b.credit({ account: 'a5', amount: 2 }));
      const outcome = await tx.commit();
      assert.equal(outcome.status, 'aborted');
      assert.match((outcome as { reason: string }).reason, /presumed aborted: its outcome was asked for/);
      assert.equal((await dmtp.outcomeOf(tx.xid)).status, 'aborted');
      await settled(banks); // both branches are told to roll back at once
      assert.deepEqual([await balances(banks[0].pool), await balances(banks[1].pool)], before);
    });

    it('rolls back when a call chained on one the block did not await is refused at commit', async () => {
      // Before, Commit waited for the debit in flight, the credit chained on it was refused ("ending"), and the
      // transaction committed the debit alone.
      await settled(banks);
      const before = [await balances(banks[0].pool), await balances(banks[1].pool)];
      let move: Promise<unknown> | undefined;
      await assert.rejects(
        dmtp.transaction(async () => {
          move = a.debit({ account: 'a6', amount: 3 }).then(() => b.credit({ account: 'a6', amount: 3 }));
          move.catch(() => undefined);
        }),
        (e: Error) => {
          assert.ok(e instanceof TransactionAbortedError, String(e));
          assert.match(
            e.message,
            /the call \/test\.Bank\/Credit was started after the transaction began to end/,
          );
          return true;
        },
      );
      await assert.rejects(move!, FailedPreconditionError);
      await settled(banks);
      assert.deepEqual([await balances(banks[0].pool), await balances(banks[1].pool)], before);
    });

    it('refuses at once a call that comes back to a branch its own chain holds (A → B → A): nothing is applied', async () => {
      // Before, bank-a's second call waited for its branch's lock — held by the first call, which waited for it —
      // until the transaction's deadline, and the initiator learned only that the call timed out.
      const before = [await balances(banks[0].pool), await balances(banks[1].pool)];
      const err = await dmtp
        .transaction(() => a.debit({ account: 'a7', amount: 2, onward: 'a8', back: 'a9' }), {
          timeoutMs: 30_000,
        })
        .then(
          () => assert.fail('committed'),
          (e: unknown) => e as Error,
        );
      // The refusal reaches the initiator through bank-b's answer; the block's error is what transaction() throws.
      assert.ok(err instanceof FailedPreconditionError, String(err));
      assert.match(
        err.message,
        /accounts@bank-a-1 of .* is held by a call up this call's own chain \(accounts@bank-a-1 → accounts@bank-b-1 → accounts@bank-a-1\)/,
      );
      await settled(banks);
      assert.deepEqual([await balances(banks[0].pool), await balances(banks[1].pool)], before);
    });

    it("leaves the caller's Metadata as it was: a later call outside the transaction carries no xid", async () => {
      const md = new Metadata();
      md.set('authorization', 'Bearer t');
      await transferWith(md);
      await settled(banks);
      assert.deepEqual(md.get('dmtp-xid'), [], 'the reused object kept no transaction context');
      assert.deepEqual(md.get('authorization'), ['Bearer t']);
    });

    it('rolls back when a later call to an instance that holds a branch timed out, even if the block goes on', async () => {
      // Before, the timed-out call's work (done at bank-a after the caller gave up) joined bank-a's branch, which
      // the first call had reported: the block caught the timeout, returned, and Commit applied both calls.
      await settled(banks);
      const before = await balances(banks[0].pool);
      await assert.rejects(
        dmtp.transaction(async () => {
          await a.debit({ account: 'a7', amount: 1 });
          await a.debit({ account: 'a7', amount: 2, slowMs: 600 }, { timeoutMs: 200 }).catch(() => undefined);
        }),
        (e: Error) => {
          assert.ok(e instanceof TransactionAbortedError, String(e));
          assert.match(e.message, /instance bank-a-1 failed after it was sent .* cannot be told/);
          return true;
        },
      );
      await sleep(700); // the slow call's handler has ended
      await settled(banks);
      assert.deepEqual(await balances(banks[0].pool), before, 'neither call applied');
    });

    it("rolls back when a call timed out after its handler's onward call worked in a branch the transaction holds", async () => {
      // Before, only the instance the call went to was suspect: bank-a held no branch yet, so the timeout was
      // passed over, and Commit applied bank-b's branch — with the credit bank-a's handler had made there.
      await settled(banks);
      const before = [await balances(banks[0].pool), await balances(banks[1].pool)];
      await assert.rejects(
        dmtp.transaction(async () => {
          await b.credit({ account: 'a7', amount: 1 });
          await a
            .debit({ account: 'a7', amount: 2, onward: 'a8', slowMs: 600 }, { timeoutMs: 300 })
            .catch(() => undefined);
        }),
        (e: Error) => {
          assert.ok(e instanceof TransactionAbortedError, String(e));
          assert.match(
            e.message,
            /instance bank-a-1 failed after it was sent .* onward calls .* cannot be told/,
          );
          return true;
        },
      );
      await sleep(700); // the slow handler has ended
      await settled(banks);
      assert.deepEqual([await balances(banks[0].pool), await balances(banks[1].pool)], before);
    });

    it('a joined block that threw leaves the outer transaction rollback-only, even when the outer block catches', async () => {
      await settled(banks);
      const before = [await balances(banks[0].pool), await balances(banks[1].pool)];
      await assert.rejects(
        dmtp.transaction(async () => {
          await dmtp
            .transaction(
              async () => {
                await a.debit({ account: 'a8', amount: 4 });
                throw new Error('credit side unavailable');
              },
              { join: true },
            )
            .catch(() => undefined);
          await b.credit({ account: 'a8', amount: 1 });
        }),
        (e: Error) =>
          e instanceof TransactionAbortedError &&
          /a joined block threw: credit side unavailable/.test(e.message),
      );
      await settled(banks);
      assert.deepEqual([await balances(banks[0].pool), await balances(banks[1].pool)], before);
    });

    it("refuses tx.commit() inside transaction()'s block: the block's return commits", async () => {
      await assert.rejects(
        dmtp.transaction(async (tx) => {
          await a.debit({ account: 'a9', amount: 1 });
          await tx.commit();
        }),
        (e: Error) =>
          e instanceof FailedPreconditionError && /commits when the block returns/.test(e.message),
      );
    });

    it('rolls back a branch whose call was still in flight at the rollback once it answers, not at the deadline', async () => {
      // Promise.all rejects at the first failure: the transaction rolls back while the slow debit still runs.
      // Before, its branch (reported after the Rollback) was left to its deadline, 20 s away here, holding
      // its row lock till then.
      await settled(banks);
      const before = [await balances(banks[0].pool), await balances(banks[1].pool)];
      let xid = '';
      await assert.rejects(
        dmtp.transaction(
          async (tx) => {
            xid = tx.xid;
            await b.credit({ account: 'a3', amount: 1 }); // the first Rollback names this branch
            return Promise.all([
              a.debit({ account: 'a3', amount: 2, slowMs: 300 }),
              b.credit({ account: 'nobody', amount: 2 }),
            ]);
          },
          { timeoutMs: 20_000 },
        ),
        /insufficient funds in nobody/,
      );
      const by = Date.now() + 5_000;
      for (;;) {
        const r = await banks[0].pool.query<{ status: string }>(
          'SELECT status FROM dmtp_branches WHERE xid = $1',
          [xid],
        );
        if (r.rows[0]?.status === 'rolled_back') break;
        assert.ok(
          Date.now() < by,
          `bank-a's branch is ${r.rows[0]?.status ?? 'absent'} 5 s after the rollback (its deadline is 20 s away)`,
        );
        await sleep(100);
      }
      await settled(banks);
      assert.deepEqual([await balances(banks[0].pool), await balances(banks[1].pool)], before);
    });

    it('aborts when a business call fails: the branch that did work rolls back', async () => {
      const before = [await balances(banks[0].pool), await balances(banks[1].pool)];
      await assert.rejects(transfer(10, 'nobody'), (err: Error & { xid?: string }) => {
        assert.match(err.message, /insufficient funds in nobody/);
        return true;
      });
      await settled(banks);
      assert.deepEqual(await balances(banks[0].pool), before[0]);
      assert.deepEqual(await balances(banks[1].pool), before[1]);
    });

    it('aborts when a branch votes ABORT at prepare: neither database keeps anything', async () => {
      const before = [await balances(banks[0].pool), await balances(banks[1].pool)];
      let xid = '';
      await assert.rejects(
        dmtp.transaction(async (tx) => {
          xid = tx.xid;
          await a.debit({ account: 'a2', amount: 7 });
          await b.credit({ account: 'a3', amount: 7, poison: true });
        }),
        TransactionAbortedError,
      );
      await settled(banks);
      assert.deepEqual(await balances(banks[0].pool), before[0]);
      assert.deepEqual(await balances(banks[1].pool), before[1]);
      assert.ok(!(await ledgerXids(banks[0].pool)).has(xid));
      assert.ok(!(await ledgerXids(banks[1].pool)).has(xid));
    });

    it('many at once, some failing: every transfer is in both databases or in neither', async () => {
      const outcomes = new Map<string, 'committed' | 'aborted'>();
      // Six at a time: each open branch holds one of its bank's 8 pool connections until it prepares.
      let next = 0;
      const worker = async () => {
        while (next < 30) {
          const n = next++;
          let xid = '';
          try {
            await dmtp.transaction(
              async (tx) => {
                xid = tx.xid;
                await a.debit({ account: `a${n % ACCOUNTS}`, amount: 1 + (n % 5) });
                await b.credit({
                  account: n % 7 === 3 ? 'nobody' : `a${(n * 3) % ACCOUNTS}`,
                  amount: 1 + (n % 5),
                  poison: n % 11 === 5,
                });
                if (n % 13 === 6) throw new Error('the block changed its mind');
              },
              { timeoutMs: 8_000 },
            );
            outcomes.set(xid, 'committed');
          } catch {
            if (xid) outcomes.set(xid, 'aborted');
          }
        }
      };
      await Promise.all(Array.from({ length: 6 }, worker));
      await settled(banks);
      const inA = await ledgerXids(banks[0].pool);
      const inB = await ledgerXids(banks[1].pool);
      const counts = { committed: 0, aborted: 0 };
      for (const [xid, o] of outcomes) {
        counts[o]++;
        assert.equal(inA.has(xid), o === 'committed', `${xid} (${o}) in bank A`);
        assert.equal(inB.has(xid), o === 'committed', `${xid} (${o}) in bank B`);
      }
      assert.equal(outcomes.size, 30);
      assert.ok(counts.committed > 0 && counts.aborted > 0, JSON.stringify(counts));
      const sum = async (pool: Pool) => Object.values(await balances(pool)).reduce((s, v) => s + v, 0);
      assert.equal(
        (await sum(banks[0].pool)) + (await sum(banks[1].pool)),
        2 * ACCOUNTS * START,
        'money is neither made nor lost',
      );
    });
  });
}
