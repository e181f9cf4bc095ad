/**
 * A small bank participant for the txapi tests: accounts in its own PostgreSQL database, Debit/Credit business
 * methods (JSON) working in the branch's pg transaction, the ParticipantService, and the PostgreSQL branch
 * store — served with plain grpc-js (test/support/txapi-grpc.ts).
 */
import { Pool } from 'pg';
import { FailedPreconditionError, freePort } from '../../common';
import {
  currentPg,
  participantMethods,
  Participant,
  ParticipantMetrics,
  PgBranchStore,
  pgResource,
  txServerMiddleware,
  type ParticipantOptions,
} from '../../txapi';
import type { MethodEntry } from '../../rpc/middleware';
import { jsonMethod, serveEntries } from './txapi-grpc';

export const BANK = {
  debit: '/test.Bank/Debit',
  credit: '/test.Bank/Credit',
  /** Debits, then fails: a call whose work must not stay in its branch. */
  debitThenFail: '/test.Bank/DebitThenFail',
  paths: [] as string[],
};
BANK.paths = [BANK.debit, BANK.credit, BANK.debitThenFail];

export interface Move {
  account: string;
  amount: number;
}

export interface Bank {
  address: string;
  participant: Participant;
  pool: Pool;
  stop(): Promise<void>;
}

export { freePort };

export async function setupAccounts(url: string, accounts: Record<string, number>): Promise<void> {
  const pool = new Pool({ connectionString: url, max: 1 });
  try {
    await pool.query('CREATE TABLE IF NOT EXISTS accounts (id text PRIMARY KEY, balance bigint NOT NULL)');
    for (const [id, balance] of Object.entries(accounts)) {
      await pool.query(
        'INSERT INTO accounts VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance',
        [id, balance],
      );
    }
  } finally {
    await pool.end();
  }
}

export async function balances(url: string): Promise<Record<string, number>> {
  const pool = new Pool({ connectionString: url, max: 1 });
  try {
    const r = await pool.query<{ id: string; balance: string }>(
      'SELECT id, balance FROM accounts ORDER BY id',
    );
    return Object.fromEntries(r.rows.map((x) => [x.id, Number(x.balance)]));
  } finally {
    await pool.end();
  }
}

export async function startBank(
  o: {
    url: string;
    service: string;
    instanceId: string;
    port?: number;
    poolSize?: number;
    savepointPerCall?: boolean;
    /** Instruments the participant's store and resource. */
    metrics?: ParticipantMetrics;
  } & Partial<
    Pick<
      ParticipantOptions,
      'recoveryIntervalMs' | 'inDoubtAfterMs' | 'coordinatorAddressFor' | 'deadlineGraceMs'
    >
  >,
): Promise<Bank> {
  const pool = new Pool({ connectionString: o.url, max: o.poolSize ?? 6 });
  const storePool = new Pool({ connectionString: o.url, max: 2 });
  pool.on('error', () => undefined);
  storePool.on('error', () => undefined);
  const port = o.port ?? (await freePort());
  const options: ParticipantOptions = {
    service: o.service,
    instanceId: o.instanceId,
    address: `127.0.0.1:${port}`,
    store: new PgBranchStore({ pool: storePool }),
    resources: [pgResource({ name: 'accounts', pool, savepointPerCall: o.savepointPerCall })],
    recoveryIntervalMs: o.recoveryIntervalMs ?? 60_000,
    inDoubtAfterMs: o.inDoubtAfterMs,
    deadlineGraceMs: o.deadlineGraceMs,
    coordinatorAddressFor: o.coordinatorAddressFor,
  };
  const participant = new Participant(o.metrics ? o.metrics.instrument(options) : options);
  await participant.start();
  const move = (sign: 1 | -1) =>
    jsonMethod<Move, { balance: number }>(sign < 0 ? BANK.debit : BANK.credit, async ({ request }) => {
      const r = await currentPg().query<{ balance: string }>(
        `UPDATE accounts SET balance = balance + $2 WHERE id = $1 AND balance + $2 >= 0 RETURNING balance`,
        [request.account, sign * request.amount],
      );
      if (r.rowCount === 0) throw new FailedPreconditionError(`insufficient funds in ${request.account}`);
      return { balance: Number(r.rows[0].balance) };
    });
  const debitThenFail = jsonMethod<Move, never>(BANK.debitThenFail, async ({ request }) => {
    await currentPg().query(`UPDATE accounts SET balance = balance - $2 WHERE id = $1`, [
      request.account,
      request.amount,
    ]);
    throw new FailedPreconditionError(`refused after debiting ${request.account}`);
  });
  const served = await serveEntries(
    [
      ...participantMethods(participant),
      move(-1) as MethodEntry,
      move(1) as MethodEntry,
      debitThenFail as MethodEntry,
    ],
    [txServerMiddleware(participant)],
    port,
  );
  return {
    address: served.address,
    participant,
    pool,
    stop: async () => {
      await served.stop();
      await participant.stop();
      await pool.end();
      await storePool.end();
    },
  };
}
