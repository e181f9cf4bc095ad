/**
 * Transfers between two PostgreSQL databases through DMTP, next to the same two updates as two independent local
 * transactions with no coordination, in the same run:
 *
 * - two bank participants (test/support/bench-bank.ts, the transfer test's bank: pg resource + PostgreSQL
 *   branch store, served by rpc's server) and the coordinator (etcd log), each in its own process, two databases of this run's own;
 *   this process transfers through DMTP's rpc client (multiplexed path) with txClientMiddleware and createDmtp:
 *   Debit on bank A + Credit on bank B + commit (2PC: PREPARE TRANSACTION / COMMIT PREPARED on each side);
 * - the baseline: from this process, the same UPDATE + ledger INSERT on A then on B, each its own local
 *   transaction (BEGIN … COMMIT), same concurrency, no coordination, no RPC;
 * - where the time goes, measured in the same run at concurrency 1 on database A: a bare local transaction's
 *   COMMIT, and a bare PREPARE TRANSACTION + COMMIT PREPARED pair (`pg.prepare_commit_pair.p50_ms`).
 *
 * Environment: PG_CONCURRENCY (32), PG_ROUND_MS (4000), PG_ROUNDS (2).
 */
import { Etcd3 } from 'etcd3';
import { performance } from 'node:perf_hooks';
import { Client, Pool } from 'pg';
import { EtcdRegistry } from '../registry';
import { client } from '../rpc';
import { createDmtp, txClientMiddleware } from '../txapi';
import { allStarted, freePort, spawnReady, type ReadyChild } from '../test/support/bench-process';
import { DATABASE_URL, ETCD_ENDPOINTS } from '../test/support/env';
import type { BenchBankSpec } from '../test/support/bench-bank';
import { BANK_DEFINITION, BANK_SCHEMA } from '../test/support/txapi-bank-main';
import { rollbackPrepared } from '../test/support/txapi-pg';
import { percentile, printTable, ratioFigure, round, type Figures } from './results';
import { drive, failures, merge, type Sample } from './support-tx';

const CONCURRENCY = Number(process.env.PG_CONCURRENCY ?? 32);
const ROUND_MS = Number(process.env.PG_ROUND_MS ?? 4_000);
const ROUNDS = Number(process.env.PG_ROUNDS ?? 2);
const ACCOUNTS = 1_000;
const START = 1_000_000_000;
const PAIRS = 200;

interface ChildInfo {
  address: string;
  id?: string;
  pid: number;
}

function urlFor(db: string): string {
  const u = new URL(DATABASE_URL);
  u.pathname = `/${db}`;
  return u.toString();
}

async function admin(sql: string): Promise<void> {
  const c = new Client({ connectionString: DATABASE_URL });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

const account = () => `acc${Math.floor(Math.random() * ACCOUNTS)}`;

/** One local transaction: the bank handler's statements, committed on their own. */
async function localMove(pool: Pool, xid: string, sign: 1 | -1): Promise<void> {
  const c = await pool.connect();
  try {
    await c.query('BEGIN');
    await c.query(`SET LOCAL lock_timeout = '1s'`);
    const acc = account();
    const r = await c.query(
      'UPDATE accounts SET balance = balance + $2 WHERE id = $1 AND balance + $2 >= 0 RETURNING balance',
      [acc, sign],
    );
    if (r.rowCount === 0) throw new Error(`insufficient funds in ${acc}`);
    await c.query('INSERT INTO ledger VALUES ($1, $2, $3)', [xid, acc, sign]);
    await c.query('COMMIT');
  } catch (err) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    c.release();
  }
}

/** At concurrency 1 on `url`: a local transaction's COMMIT, and a PREPARE TRANSACTION + COMMIT PREPARED pair. */
async function commitCosts(url: string): Promise<{ commit: number[]; pair: number[]; prepare: number[] }> {
  const c = new Client({ connectionString: url });
  await c.connect();
  const out = { commit: [] as number[], pair: [] as number[], prepare: [] as number[] };
  try {
    for (let i = 0; i < PAIRS; i++) {
      await c.query('BEGIN');
      await c.query('UPDATE accounts SET balance = balance + 0 WHERE id = $1', [account()]);
      let t = performance.now();
      await c.query('COMMIT');
      out.commit.push(performance.now() - t);
      const gid = `bench_pair_${process.pid}_${i}`;
      await c.query('BEGIN');
      await c.query('UPDATE accounts SET balance = balance + 0 WHERE id = $1', [account()]);
      t = performance.now();
      await c.query(`PREPARE TRANSACTION '${gid}'`);
      const prepared = performance.now();
      await c.query(`COMMIT PREPARED '${gid}'`);
      out.prepare.push(prepared - t);
      out.pair.push(performance.now() - t);
    }
  } finally {
    await c.end();
  }
  for (const a of Object.values(out)) a.sort((x, y) => x - y);
  return out;
}

export async function run(): Promise<Figures> {
  const tag = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  const prefix = `/dmtp-bench/pg-${tag}`;
  const dbs = [`bench_pg_${tag}_a`, `bench_pg_${tag}_b`];
  const urls = dbs.map(urlFor);
  const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
  const registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix, leaseTtlSeconds: 10 });
  const children: ReadyChild<ChildInfo>[] = [];
  const closers: (() => unknown)[] = [];
  const pools: Pool[] = [];
  const created: string[] = [];
  const figures: Figures = {};
  try {
    for (const db of dbs) {
      await admin(`CREATE DATABASE ${db}`);
      created.push(db);
    }
    for (const url of urls) {
      const pool = new Pool({ connectionString: url, max: CONCURRENCY + 4 });
      pool.on('error', () => undefined);
      pools.push(pool);
      await pool.query(BANK_SCHEMA);
      await pool.query(
        `INSERT INTO accounts SELECT 'acc' || i, ${START} FROM generate_series(0, ${ACCOUNTS - 1}) AS i`,
      );
    }
    const coordinatorId = `bench-${tag}`;
    const coordinator = await spawnReady<ChildInfo>('coordinator/main.ts', {
      ETCD_ENDPOINTS: ETCD_ENDPOINTS.join(','),
      DMTP_ETCD_PREFIX: prefix,
      DMTP_COORDINATOR_ID: coordinatorId,
      DMTP_EVENT_SINK: 'none',
      DMTP_LOG_LEVEL: 'error',
    });
    children.push(coordinator);
    const services = ['bank-a', 'bank-b'];
    const banks = await allStarted(
      services.map(async (service, i) =>
        spawnReady<ChildInfo>('test/support/bench-bank.ts', {
          BENCH_BANK: JSON.stringify({
            url: urls[i],
            service,
            instanceId: `${service}-1`,
            port: await freePort(),
            workConnections: CONCURRENCY + 4,
            storeConnections: 16,
          } satisfies BenchBankSpec),
        }),
      ),
      (c) => children.push(c),
    );
    // the banks serve without a registry: register its instances here (it serves the multiplexed path)
    for (let i = 0; i < banks.length; i++) {
      const reg = await registry.register({
        service: `${services[i]}-api`,
        instanceId: `${services[i]}-1`,
        address: banks[i].info.address,
        metadata: { mux: '1' },
      });
      closers.push(() => reg.deregister());
    }
    const [a, b] = services.map((s) =>
      client(registry, `${s}-api`, BANK_DEFINITION, { middleware: [txClientMiddleware], timeoutMs: 30_000 }),
    );
    closers.push(
      () => a.close(),
      () => b.close(),
    );
    await Promise.all([a.ready(), b.ready()]);
    const dmtp = createDmtp({
      coordinator: { id: coordinatorId, address: coordinator.info.address },
      initiator: 'bench-pg',
      defaultTimeoutMs: 30_000,
    });
    closers.push(() => dmtp.close());

    const transfer = async (): Promise<number> => {
      const tx = await dmtp.begin();
      await tx.run(async () => {
        await a.debit({ account: account(), amount: 1 });
        await b.credit({ account: account(), amount: 1 });
      });
      const t = performance.now();
      const o = await tx.commit();
      if (o.status !== 'committed') throw new Error(`not committed: ${JSON.stringify(o)}`);
      return performance.now() - t;
    };
    let n = 0;
    const local = async () => {
      const xid = `local-${n++}`;
      await localMove(pools[0], xid, -1);
      await localMove(pools[1], xid, 1);
    };

    await drive(local, 1_000, CONCURRENCY);
    await drive(transfer, 1_500, CONCURRENCY);
    const loc: Sample[] = [];
    const dm: Sample[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      loc.push(await drive(local, ROUND_MS, CONCURRENCY));
      dm.push(await drive(transfer, ROUND_MS, CONCURRENCY));
    }
    const costs = await commitCosts(urls[0]);
    const l = merge(loc);
    const t = merge(dm);
    const pair = percentile(costs.pair, 50);
    const commit = percentile(costs.commit, 50);
    const load = `${CONCURRENCY} in flight, ${ROUNDS}×${ROUND_MS} ms alternating with the baseline`;
    const where =
      `Where the time goes (same run, concurrency 1, database A): a local COMMIT p50 ${round(commit, 2)} ms; ` +
      `PREPARE TRANSACTION p50 ${round(percentile(costs.prepare, 50), 2)} ms + COMMIT PREPARED = ${round(pair, 2)} ms ` +
      `(two WAL flushes instead of one). Per side a DMTP transfer runs 10 statements where the local one runs 5 ` +
      `(BEGIN, SET, UPDATE, INSERT, COMMIT), and 4 WAL flushes where it runs 1: PostgreSQL's 2PC itself adds one ` +
      `(PREPARE + COMMIT PREPARED), the PostgreSQL branch store adds two (its prepared and committed rows, each ` +
      `its own committed statement; the registered one is held in memory until then) plus two reads, and ` +
      `the branch holds its connection from the first call to PREPARE; DMTP's coordination is the Commit call, one prepare and one commit frame ` +
      `per side on the multiplexed stream and the group-committed etcd COMMITTING record. Commit call p50 ` +
      `${round(t.partP50, 2)} ms of a ${round(t.p50, 2)} ms transfer.`;
    figures['pg.transfer.tps'] = ratioFigure(t.rate, l.rate, 'tx/s', {
      note: `Debit on A + Credit on B through DMTP (2PC); baseline: the same UPDATE + ledger INSERT on A then B as two local transactions, no coordination; ${load}${failures(t)}${failures(l)}`,
    });
    figures['pg.transfer.p50_ms'] = ratioFigure(t.p50, l.p50, 'ms', {
      note: `whole transfer; Commit call alone p50 ${round(t.partP50, 2)} ms`,
    });
    figures['pg.transfer.p99_ms'] = ratioFigure(t.p99, l.p99, 'ms', {
      note: `whole transfer; Commit call alone p99 ${round(t.partP99, 2)} ms`,
    });
    figures['pg.transfer_vs_local.ratio'] = ratioFigure(t.rate, l.rate, 'tx/s', {
      note: `transfers/s through DMTP; baseline: the same two updates as two local transactions/s${failures(t)}${failures(l)}. ${where}`,
    });
    figures['pg.prepare_commit_pair.p50_ms'] = ratioFigure(pair, commit, 'ms', {
      note: `PREPARE TRANSACTION + COMMIT PREPARED of a one-row update, concurrency 1, ${PAIRS} times; baseline: a plain COMMIT of the same update`,
    });
  } finally {
    for (const c of closers.reverse()) await Promise.resolve(c()).catch(() => undefined);
    await Promise.all(children.map((c) => c.stop()));
    await registry.close().catch(() => undefined);
    for (const p of pools) await p.end().catch(() => undefined);
    for (const db of created) {
      await rollbackPrepared(urlFor(db)).catch(() => undefined);
      await admin(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`).catch((err) =>
        console.error(`bench pg: could not drop ${db}: ${(err as Error).message}`),
      );
    }
    await etcd
      .delete()
      .prefix(prefix)
      .catch(() => undefined);
    etcd.close();
  }
  return figures;
}

if (require.main === module) {
  void run().then((f) => printTable('bench pg', f));
}
