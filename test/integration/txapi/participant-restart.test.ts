// A participant process killed and restarted with the same instance id, against the real coordinator.
//
// Between two business calls of one branch: the bank child (test/support/txapi-bank-main.ts, PostgreSQL resource, lazily enlisted branches) and
// the real coordinator. Before, the first call's branch left nothing behind (its pg transaction died with the
// process, its record was never written), the second call opened the branch anew, and Commit applied the second
// call without the first. Each branch report now names the process's incarnation: the initiator sees the branch
// come back from another one and rolls the transaction back.
//
// Between PREPARE TRANSACTION and its branch record: the restarted bank finds a prepared transaction of its own it
// has no record of, asks the coordinator (as a registry would tell it where) and rolls it back on its ABORT.
import { strict as assert } from 'node:assert';
import type { ChildProcess } from 'node:child_process';
import { Etcd3 } from 'etcd3';
import { Pool } from 'pg';
import { Coordinator } from '../../../coordinator';
import { createDmtp, TransactionAbortedError, txGrpcInterceptor, type Dmtp } from '../../../txapi';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { BANK_SCHEMA, type BankSpec } from '../../support/txapi-bank-main';
import { spawnBank } from '../../support/txapi-bank-child';
import { freePort } from '../../support/txapi-bank';
import { JsonClient } from '../../support/txapi-grpc';
import { createTestDb, preparedGids, type TestDb } from '../../support/txapi-pg';

const [DEBIT, CREDIT] = ['/test.Bank/Debit', '/test.Bank/Credit'];

describe('txapi: a participant killed and restarted with the same instance id', function () {
  this.timeout(60_000);
  let db: TestDb;
  let pool: Pool;
  let prefix: string;
  let coordinator: Coordinator;
  let dmtp: Dmtp;
  let bank: ChildProcess | undefined;
  let other: ChildProcess | undefined;
  let coordinatorAddress = '';
  const clients: JsonClient[] = [];

  /** The bank child on `port` (same instance id every time); resolves once it serves. */
  const launch = (port: number, more: Partial<BankSpec> = {}) =>
    spawnBank({ url: db.url, service: 'bank', instanceId: 'bank-1', port, ...more }, 'error');
  const killed = async (proc: ChildProcess) => {
    const gone = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGKILL');
    await gone;
  };
  const balances = async () =>
    Object.fromEntries(
      (await pool.query<{ id: string; balance: string }>('SELECT id, balance FROM accounts')).rows.map(
        (r) => [r.id, Number(r.balance)],
      ),
    );

  before(async function () {
    db = await createTestDb(this);
    pool = new Pool({ connectionString: db.url, max: 2 });
    await pool.query(BANK_SCHEMA);
    await pool.query(`INSERT INTO accounts VALUES ('a0', 1000), ('a1', 1000)`);
    const name = nameFor(this, 30);
    prefix = `/t/${name}`;
    coordinator = new Coordinator({
      id: name.replace(/[^A-Za-z0-9._-]/g, '-'),
      etcd: { endpoints: ETCD_ENDPOINTS, prefix },
    });
    coordinatorAddress = await coordinator.start();
    dmtp = createDmtp({
      coordinator: { id: coordinator.id, address: coordinatorAddress },
      commitTimeoutMs: 8_000,
    });
  });

  after(async () => {
    for (const c of clients) c.close();
    for (const p of [bank, other]) if (p && p.exitCode === null && p.signalCode === null) await killed(p);
    dmtp?.close();
    await coordinator?.stop();
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    await etcd.delete().prefix(prefix);
    etcd.close();
    await pool?.end();
    await db?.drop();
  });

  it('rolls the transaction back instead of committing the later call alone', async () => {
    const port = await freePort();
    bank = await launch(port);
    const client = () => {
      const c = new JsonClient(`127.0.0.1:${port}`, [DEBIT, CREDIT], [txGrpcInterceptor]);
      clients.push(c);
      return c;
    };
    let xid = '';
    await assert.rejects(
      dmtp.transaction(
        async (tx) => {
          xid = tx.xid;
          await client().call(DEBIT, { account: 'a0', amount: 30 });
          await killed(bank!); // its open pg transaction (the debit) dies with it
          bank = await launch(port);
          await client().call(CREDIT, { account: 'a1', amount: 1 }); // a fresh channel to the restarted bank
        },
        { timeoutMs: 30_000 },
      ),
      (e: Error) => {
        assert.ok(e instanceof TransactionAbortedError, String(e));
        assert.match(e.message, /branch accounts@bank-1 .* was lost: the instance restarted between calls/);
        return true;
      },
    );
    // The restarted bank's branch (the credit) is rolled back; nothing of the transaction is applied.
    const by = Date.now() + 15_000;
    while ((await preparedGids(db.url)).length > 0 && Date.now() < by)
      await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(await preparedGids(db.url), []);
    assert.deepEqual(await balances(), { a0: 1000, a1: 1000 });
    const ledger = await pool.query('SELECT 1 FROM ledger WHERE xid = $1', [xid]);
    assert.equal(ledger.rowCount, 0);
  });

  it('asks the coordinator about a transaction it prepared but never recorded, and rolls it back on its ABORT', async () => {
    const [port, otherPort] = [await freePort(), await freePort()];
    if (bank && bank.exitCode === null && bank.signalCode === null) await killed(bank);
    const crashed = { at: 1, on: 'resource-prepared' as const };
    bank = await launch(port, { fault: crashed, coordinatorAddress });
    other = await spawnBank(
      { url: db.url, service: 'other', instanceId: 'other-1', port: otherPort },
      'error',
    );
    const exited = new Promise((r) => bank!.once('exit', r));
    const [a, b] = [port, otherPort].map((p) => {
      const c = new JsonClient(`127.0.0.1:${p}`, [DEBIT, CREDIT], [txGrpcInterceptor]);
      clients.push(c);
      return c;
    });
    let xid = '';
    await assert.rejects(
      dmtp.transaction(async (tx) => {
        xid = tx.xid;
        await a.call(DEBIT, { account: 'a0', amount: 30 });
        await b.call(CREDIT, { account: 'a1', amount: 30 });
      }),
      (e: Error) => e instanceof TransactionAbortedError,
    );
    await exited;
    const gid = `dmtp_${xid}|accounts@bank-1`;
    // The other branch is rolled back by the coordinator's phase 2; the crashed one's stays prepared.
    const by = Date.now() + 15_000;
    while ((await preparedGids(db.url)).length > 1 && Date.now() < by)
      await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(await preparedGids(db.url), [gid], 'prepared, unrecorded, its process gone');

    bank = await launch(port, { coordinatorAddress }); // start() runs its recovery before it serves
    assert.deepEqual(await preparedGids(db.url), []);
    const rec = await pool.query<{ status: string; reason: string }>(
      'SELECT status, reason FROM dmtp_branches WHERE xid = $1 AND branch_id = $2',
      [xid, 'accounts@bank-1'],
    );
    assert.deepEqual(rec.rows, [
      {
        status: 'rolled_back',
        reason: 'prepared here but never voted (no record); the coordinator reports abort',
      },
    ]);
    assert.deepEqual(await balances(), { a0: 1000, a1: 1000 });
    assert.equal((await pool.query('SELECT 1 FROM ledger WHERE xid = $1', [xid])).rowCount, 0);
  });
});
