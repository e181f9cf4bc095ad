/**
 * A bank participant as a child process, served with rpc's server helper (unary + multiplexed path), for the
 * end-to-end transfer test: `npx tsx test/support/txapi-bank-main.ts` with BANK (JSON):
 *   { url, service, instanceId, port, fault?: { on: 'prepare' | 'commit' | 'resource-prepared', at: number },
 *     coordinatorAddress? }
 * prints `{"ready":true,"address":…}`. Fault: at the N-th PREPARED vote (after it is durable, before the answer),
 * the N-th phase-2 Commit (before it is applied) or the N-th PREPARE TRANSACTION (done, its branch not yet
 * recorded as prepared) the process exits at once, like kill -9. `coordinatorAddress`: where in-doubt recovery
 * asks about a transaction, as a registry would answer (without it, only the address a branch recorded).
 * Credit with `poison: true` writes a row a deferred constraint trigger refuses at PREPARE: the branch votes ABORT.
 */
import { Pool } from 'pg';
import { FailedPreconditionError } from '../../common';
import { ParticipantService } from '../../proto';
import { Vote } from '../../proto/gen/dmtp/v1/types';
import type { UnaryHandler } from '../../rpc/middleware';
import { startServer } from '../../rpc/server';
import {
  currentBranch,
  currentPg,
  participantHandlers,
  Participant,
  PgBranchStore,
  pgResource,
  txServerMiddleware,
} from '../../txapi';

export interface BankSpec {
  url: string;
  service: string;
  instanceId: string;
  port: number;
  fault?: { on: 'prepare' | 'commit' | 'resource-prepared'; at: number };
  coordinatorAddress?: string;
}

export interface TransferMove {
  account: string;
  amount: number;
  poison?: boolean;
  /** Tests of onward calls (rpc-client.test.ts): the handler then credits this account at bank-b itself. */
  onward?: string;
  /** … and asks bank-b to credit this account back at bank-a from inside its handler (A → B → A). */
  back?: string;
  /** … without awaiting that onward call before it returns. */
  onwardUnawaited?: boolean;
  /** … and then fails (FAILED_PRECONDITION) once that onward call succeeded. */
  failAfterOnward?: boolean;
  /** Tests of calls that time out at the caller: the handler waits this long after its work. */
  slowMs?: number;
}

export const BANK_SCHEMA = `
  CREATE TABLE IF NOT EXISTS accounts (id text PRIMARY KEY, balance bigint NOT NULL);
  CREATE TABLE IF NOT EXISTS ledger (xid text NOT NULL, account text NOT NULL, amount bigint NOT NULL);
  CREATE TABLE IF NOT EXISTS poison (xid text NOT NULL);
  CREATE OR REPLACE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'poisoned transfer %', NEW.xid; END $$;
  DROP TRIGGER IF EXISTS poison_check ON poison;
  CREATE CONSTRAINT TRIGGER poison_check AFTER INSERT ON poison DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION refuse_poison();`;

const json = (path: string) => ({
  path,
  requestStream: false as const,
  responseStream: false as const,
  requestSerialize: (v: unknown) => Buffer.from(JSON.stringify(v)),
  requestDeserialize: (b: Buffer) => JSON.parse(b.toString('utf8')) as TransferMove,
  responseSerialize: (v: unknown) => Buffer.from(JSON.stringify(v)),
  responseDeserialize: (b: Buffer) => JSON.parse(b.toString('utf8')) as { balance: number },
});

export const BANK_DEFINITION = { debit: json('/test.Bank/Debit'), credit: json('/test.Bank/Credit') };

/**
 * The bank's Debit (sign -1) or Credit (+1): one balance update and a ledger row, inside the branch's pg
 * transaction. Shared by every bank process of the tests and benches. `poison` writes a row a deferred
 * constraint trigger refuses at PREPARE, so the branch votes ABORT.
 */
export const bankMove =
  (sign: 1 | -1): UnaryHandler<TransferMove, { balance: number }> =>
  async ({ request }) => {
    const pg = currentPg();
    const { xid } = currentBranch();
    await pg.query(`SET LOCAL lock_timeout = '1s'`);
    const r = await pg.query<{ balance: string }>(
      'UPDATE accounts SET balance = balance + $2 WHERE id = $1 AND balance + $2 >= 0 RETURNING balance',
      [request.account, sign * request.amount],
    );
    if (r.rowCount === 0) throw new FailedPreconditionError(`insufficient funds in ${request.account}`);
    await pg.query('INSERT INTO ledger VALUES ($1, $2, $3)', [xid, request.account, sign * request.amount]);
    if (request.poison) await pg.query('INSERT INTO poison VALUES ($1)', [xid]);
    return { balance: Number(r.rows[0].balance) };
  };

async function main(): Promise<void> {
  const spec = JSON.parse(process.env.BANK ?? '{}') as BankSpec;
  const pool = new Pool({ connectionString: spec.url, max: 8 });
  const storePool = new Pool({ connectionString: spec.url, max: 4 });
  pool.on('error', () => undefined);
  storePool.on('error', () => undefined);
  const crash = () => process.exit(137);
  const accounts = pgResource({ name: 'accounts', pool });
  if (spec.fault?.on === 'resource-prepared') {
    const prepare = accounts.prepare.bind(accounts);
    const { at } = spec.fault;
    let n = 0;
    accounts.prepare = async (branch, handle) => {
      const vote = await prepare(branch, handle);
      if (++n === at) crash(); // PREPARE TRANSACTION done, the branch's record not written
      return vote;
    };
  }
  const { coordinatorAddress } = spec;
  const participant = new Participant({
    service: spec.service,
    instanceId: spec.instanceId,
    address: `127.0.0.1:${spec.port}`,
    store: new PgBranchStore({ pool: storePool }),
    resources: [accounts],
    resourceFor: (m) => (m.startsWith('/test.Bank/') ? 'accounts' : undefined),
    recoveryIntervalMs: 1_000,
    inDoubtAfterMs: 1_000,
    deadlineGraceMs: 200,
    ...(coordinatorAddress && { coordinatorAddressFor: async () => coordinatorAddress }),
  });
  await participant.start();
  const h = participantHandlers(participant);
  let prepared = 0;
  let commits = 0;
  await startServer({
    host: '127.0.0.1',
    port: spec.port,
    middleware: [txServerMiddleware(participant)],
    services: [
      {
        name: spec.service,
        definition: ParticipantService,
        handlers: {
          prepare: async (call) => {
            const r = await h.prepare(call);
            if (spec.fault?.on === 'prepare' && r.vote === Vote.VOTE_PREPARED && ++prepared === spec.fault.at)
              crash();
            return r;
          },
          commit: async (call) => {
            if (spec.fault?.on === 'commit' && !call.request.onePhase && ++commits === spec.fault.at) crash();
            return h.commit(call);
          },
          rollback: h.rollback,
        },
      },
      {
        name: `${spec.service}-api`,
        definition: BANK_DEFINITION,
        handlers: { debit: bankMove(-1), credit: bankMove(1) },
      },
    ],
  });
  process.stdout.write(JSON.stringify({ ready: true, address: `127.0.0.1:${spec.port}` }) + '\n');
  process.on('SIGTERM', () => {
    participant.stop().finally(() => process.exit(0));
  });
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`bank failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  });
}
