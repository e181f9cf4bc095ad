/**
 * A bank participant for the PostgreSQL benchmark (bench/pg.ts), run as its own process: the bank of the
 * transfer test (test/support/txapi-bank-main.ts: Debit/Credit on `accounts` + a ledger row, pg resource,
 * PostgreSQL branch store, rpc's server with the multiplexed path) without fault switches, with pools sized for
 * the benchmark's concurrency (an open branch holds a connection of the resource's pool until prepare).
 *
 * `npx tsx test/support/bench-bank.ts` with BENCH_BANK (JSON of BenchBankSpec); prints `{"ready":true,…}`.
 */
import { Pool } from 'pg';
import { ParticipantService } from '../../proto';
import { startServer } from '../../rpc/server';
import { participantHandlers, Participant, PgBranchStore, pgResource, txServerMiddleware } from '../../txapi';
import { BANK_DEFINITION, bankMove } from './txapi-bank-main';

export interface BenchBankSpec {
  url: string;
  service: string;
  instanceId: string;
  port: number;
  /** Connections of the resource's pool (open branches) and of the branch store's. */
  workConnections: number;
  storeConnections: number;
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.env.BENCH_BANK ?? '{}') as BenchBankSpec;
  const pool = new Pool({ connectionString: spec.url, max: spec.workConnections });
  const storePool = new Pool({ connectionString: spec.url, max: spec.storeConnections });
  pool.on('error', () => undefined);
  storePool.on('error', () => undefined);
  const participant = new Participant({
    service: spec.service,
    instanceId: spec.instanceId,
    address: `127.0.0.1:${spec.port}`,
    store: new PgBranchStore({ pool: storePool }),
    resources: [pgResource({ name: 'accounts', pool })],
    resourceFor: (m) => (m.startsWith('/test.Bank/') ? 'accounts' : undefined),
  });
  await participant.start();
  const server = await startServer({
    host: '127.0.0.1',
    port: spec.port,
    middleware: [txServerMiddleware(participant)],
    drainDelayMs: 0,
    gracePeriodMs: 1_000,
    services: [
      { name: spec.service, definition: ParticipantService, handlers: participantHandlers(participant) },
      {
        name: `${spec.service}-api`,
        definition: BANK_DEFINITION,
        handlers: { debit: bankMove(-1), credit: bankMove(1) },
      },
    ],
  });
  process.stdout.write(JSON.stringify({ ready: true, address: server.address, pid: process.pid }) + '\n');
  let stopping = false;
  process.on('SIGTERM', () => {
    if (stopping) return;
    stopping = true;
    void (async () => {
      await server.stop().catch(() => undefined);
      await participant.stop().catch(() => undefined);
      await pool.end().catch(() => undefined);
      await storePool.end().catch(() => undefined);
      process.exit(0);
    })();
  });
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`bench bank failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  });
}
