// End to end: 200 concurrent transfers between two banks in two PostgreSQL databases, each bank a participant
// child process served by rpc's server helper, the real coordinator (coordinator/main.ts, etcd log) as a child
// process, faults injected: a credit poisoned so its branch votes ABORT at PREPARE, bank A exits right after a
// durable PREPARED vote, bank B exits on a phase-2 Commit, the coordinator exits after a durable decision. Each
// crashed process is restarted on the same port. Afterwards: the sum of balances is unchanged, every transfer is
// in both databases or in neither (committed ones in both, aborted ones in neither), no prepared transaction
// and no undecided branch is left.
import { strict as assert } from 'node:assert';
import type { ChildProcess } from 'node:child_process';
import { Etcd3 } from 'etcd3';
import { Pool } from 'pg';
import { createDmtp, TransactionAbortedError, txGrpcInterceptor, type Dmtp } from '../../../txapi';
import { spawnCoordinator, type CoordinatorChild } from '../../support/coordinator-process';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { BANK_SCHEMA, type BankSpec } from '../../support/txapi-bank-main';
import { spawnBank } from '../../support/txapi-bank-child';
import { freePort } from '../../support/txapi-bank';
import { JsonClient } from '../../support/txapi-grpc';
import { createTestDb, preparedGids, type TestDb } from '../../support/txapi-pg';

const PATHS = ['/test.Bank/Debit', '/test.Bank/Credit'];
const ACCOUNTS = 20;
const START = 1_000;

interface Supervised {
  current: ChildProcess | undefined;
  restarts: number;
  stopping: boolean;
  stop(): Promise<void>;
}

/** Runs a bank child; restarts it (without its fault) whenever it crashes, until stopped. */
async function superviseBank(spec: BankSpec): Promise<Supervised> {
  const s: Supervised = { current: undefined, restarts: 0, stopping: false, stop: async () => undefined };
  const launch = async (withFault: boolean): Promise<void> => {
    const proc = await spawnBank((withFault ? spec : { ...spec, fault: undefined }) as BankSpec);
    s.current = proc;
    proc.once('exit', () => {
      if (s.stopping) return;
      s.restarts++;
      launch(false).catch((err) => process.stderr.write(`bank restart failed: ${String(err)}\n`));
    });
  };
  await launch(true);
  s.stop = async () => {
    s.stopping = true;
    const p = s.current;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    const t = setTimeout(() => p.kill('SIGKILL'), 5_000);
    await gone;
    clearTimeout(t);
  };
  return s;
}

async function sumOf(pool: Pool): Promise<number> {
  return Number((await pool.query<{ s: string }>('SELECT sum(balance) AS s FROM accounts')).rows[0].s);
}

async function ledgerXids(pool: Pool): Promise<Set<string>> {
  return new Set(
    (await pool.query<{ xid: string }>('SELECT DISTINCT xid FROM ledger')).rows.map((r) => r.xid),
  );
}

async function openBranches(pool: Pool): Promise<number> {
  const r = await pool.query<{ n: string }>(
    `SELECT count(*) AS n FROM dmtp_branches WHERE status IN ('registered', 'prepared')`,
  );
  return Number(r.rows[0].n);
}

describe('txapi end to end: transfers between two banks with faults', function () {
  this.timeout(240_000);
  let dbA: TestDb;
  let dbB: TestDb;
  let poolA: Pool;
  let poolB: Pool;
  let prefix: string;
  let coord: CoordinatorChild | undefined;
  let coordRestarts = 0;
  let stoppingCoord = false;
  const banks: Supervised[] = [];
  const clients: JsonClient[] = [];
  let dmtp: Dmtp | undefined;

  before(async function () {
    dbA = await createTestDb(this, '_a');
    dbB = await createTestDb(this, '_b');
    poolA = new Pool({ connectionString: dbA.url, max: 2 });
    poolB = new Pool({ connectionString: dbB.url, max: 2 });
    for (const [pool, p] of [
      [poolA, 'a'],
      [poolB, 'b'],
    ] as const) {
      await pool.query(BANK_SCHEMA);
      for (let i = 0; i < ACCOUNTS; i++)
        await pool.query('INSERT INTO accounts VALUES ($1, $2)', [`${p}${i}`, START]);
    }
  });

  after(async () => {
    for (const c of clients) c.close();
    dmtp?.close();
    for (const b of banks) await b.stop();
    stoppingCoord = true;
    await coord?.stop();
    if (prefix) {
      const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
      await etcd.delete().prefix(prefix);
      etcd.close();
    }
    await poolA?.end();
    await poolB?.end();
    await dbA?.drop();
    await dbB?.drop();
  });

  it('keeps the sum, applies each transfer in both databases or neither, and leaves nothing in doubt', async function () {
    const name = nameFor(this, 30);
    prefix = `/t/${name}`;
    const coordId = name.replace(/[^A-Za-z0-9._-]/g, '-');
    const coordPort = await freePort();
    const startCoord = async (failpoint?: string) => {
      coord = await spawnCoordinator({
        id: coordId,
        prefix,
        failpoint,
        env: { DMTP_COORDINATOR_PORT: String(coordPort) },
      });
      coord.exited.then(() => {
        if (stoppingCoord) return;
        coordRestarts++;
        startCoord().catch((err) => process.stderr.write(`coordinator restart failed: ${String(err)}\n`));
      });
    };
    // Faults fire early (the 12th prepare, the 6th commit, the 8th decision): each crash must happen for the
    // test to prove recovery from it, and most transfers then run across the crashes and recoveries.
    await startCoord('after-decision-before-phase2:exit:8');
    const [portA, portB] = [await freePort(), await freePort()];
    banks.push(
      await superviseBank({
        url: dbA.url,
        service: 'bank-a',
        instanceId: 'bank-a-1',
        port: portA,
        fault: { on: 'prepare', at: 12 },
      }),
      await superviseBank({
        url: dbB.url,
        service: 'bank-b',
        instanceId: 'bank-b-1',
        port: portB,
        fault: { on: 'commit', at: 6 },
      }),
    );
    dmtp = createDmtp({
      coordinator: { id: coordId, address: `127.0.0.1:${coordPort}` },
      commitTimeoutMs: 8_000,
    });
    const a = new JsonClient(`127.0.0.1:${portA}`, PATHS, [txGrpcInterceptor]);
    const b = new JsonClient(`127.0.0.1:${portB}`, PATHS, [txGrpcInterceptor]);
    clients.push(a, b);

    const outcome = new Map<string, 'committed' | 'aborted' | 'unknown'>();
    const reasons = new Map<string, number>();
    let next = 0;
    const worker = async () => {
      while (next < 200) {
        const n = next++;
        const amount = 1 + (n % 17);
        let xid = '';
        try {
          await dmtp!.transaction(
            async (tx) => {
              xid = tx.xid;
              await a.call(PATHS[0], { account: `a${n % ACCOUNTS}`, amount }, undefined, 3_000);
              await b.call(
                PATHS[1],
                { account: `b${(n * 7) % ACCOUNTS}`, amount, poison: n % 23 === 5 },
                undefined,
                3_000,
              );
            },
            { timeoutMs: 4_000 },
          );
          outcome.set(xid, 'committed');
        } catch (err) {
          const why =
            `${(err as Error).name}: ${(err as Error).message.replace(/[0-9a-z]+:[0-9a-z]+:[0-9a-z]+/g, 'X')}`.slice(
              0,
              160,
            );
          reasons.set(why, (reasons.get(why) ?? 0) + 1);
          // A bank or the coordinator is down (restarting): back off instead of burning through the
          // transfers while it is away, so most of them run across the crashes and the recoveries.
          if (/Unavailable|Unknown/.test((err as Error).name)) await new Promise((r) => setTimeout(r, 250));
          if (!xid) continue;
          outcome.set(
            xid,
            err instanceof TransactionAbortedError || !(err as Error).name?.includes('Unknown')
              ? 'aborted'
              : 'unknown',
          );
        }
      }
    };
    await Promise.all(Array.from({ length: 10 }, worker));

    // Let recovery and phase-2 retries finish: no prepared transaction, no undecided branch.
    const settleBy = Date.now() + 30_000;
    for (;;) {
      const left =
        (await preparedGids(dbA.url)).length +
        (await preparedGids(dbB.url)).length +
        (await openBranches(poolA)) +
        (await openBranches(poolB));
      if (left === 0) break;
      if (Date.now() > settleBy) {
        const open = async (pool: Pool) =>
          (
            await pool.query(
              `SELECT xid, branch_id, status, coordinator, deadline_at_ms, reason FROM dmtp_branches
               WHERE status IN ('registered', 'prepared')`,
            )
          ).rows;
        const detail = {
          now: Date.now(),
          preparedA: await preparedGids(dbA.url),
          preparedB: await preparedGids(dbB.url),
          openA: await open(poolA),
          openB: await open(poolB),
        };
        assert.fail(
          `${left} prepared transactions or open branches left after 30 s: ${JSON.stringify(detail)}`,
        );
      }
      await new Promise((r) => setTimeout(r, 500));
    }

    assert.equal(
      (await sumOf(poolA)) + (await sumOf(poolB)),
      2 * ACCOUNTS * START,
      'the sum of all balances',
    );
    const inA = await ledgerXids(poolA);
    const inB = await ledgerXids(poolB);
    assert.deepEqual(
      [...inA].filter((x) => !inB.has(x)),
      [],
      'transfers only in bank A',
    );
    assert.deepEqual(
      [...inB].filter((x) => !inA.has(x)),
      [],
      'transfers only in bank B',
    );
    const counts = { committed: 0, aborted: 0, unknown: 0 };
    for (const [xid, o] of outcome) {
      counts[o]++;
      if (o === 'committed') assert.ok(inA.has(xid), `committed ${xid} is applied`);
      if (o === 'aborted') assert.ok(!inA.has(xid), `aborted ${xid} is not applied`);
    }
    assert.equal(outcome.size, 200);
    assert.ok(counts.committed > 0 && counts.aborted > 0, JSON.stringify({ counts, reasons: [...reasons] }));
    assert.ok(banks[0].restarts >= 1 && banks[1].restarts >= 1, 'both banks crashed and came back');
    assert.ok(
      coordRestarts >= 1,
      `the coordinator crashed after a decision and came back: ${JSON.stringify(counts)}`,
    );
  });
});
