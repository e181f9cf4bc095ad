/**
 * A bank participant instance for the HA chaos test, as a child process: the PostgreSQL participant of
 * txapi-bank-main.ts (same schema and Debit/Credit methods), served with rpc's server helper and registered in
 * the registry under its service name, so initiators call it by name through rpc's client. In-doubt recovery
 * asks whoever answers for the xid's owner now (the owner route in the registry, which a taker publishes).
 *
 * `npx tsx test/support/ha-bank-main.ts` with HA_BANK (JSON): { url, service, instanceId, port, endpoints,
 * prefix, leaseTtlSeconds } prints `{"ready":true,"address":…}`; SIGTERM stops it gracefully.
 */
import { Pool } from 'pg';
import { FailedPreconditionError } from '../../common';
import { ParticipantService } from '../../proto';
import { EtcdRegistry } from '../../registry';
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
import { BANK_DEFINITION, type TransferMove } from './txapi-bank-main';

interface HaBankSpec {
  url: string;
  service: string;
  instanceId: string;
  port: number;
  endpoints: string[];
  prefix: string;
  leaseTtlSeconds: number;
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.env.HA_BANK ?? '{}') as HaBankSpec;
  const pool = new Pool({ connectionString: spec.url, max: 8 });
  const storePool = new Pool({ connectionString: spec.url, max: 4 });
  pool.on('error', () => undefined);
  storePool.on('error', () => undefined);
  const registry = new EtcdRegistry({
    hosts: spec.endpoints,
    prefix: spec.prefix,
    leaseTtlSeconds: spec.leaseTtlSeconds,
  });
  const addressOf = async (owner: string) => {
    for (const service of ['dmtp-coordinator-owner', 'dmtp-coordinator']) {
      const i = (await registry.instances(service)).find((x) => x.instanceId === owner && x.address);
      if (i) return i.address;
    }
    return undefined;
  };
  const participant = new Participant({
    service: spec.service,
    instanceId: spec.instanceId,
    address: `127.0.0.1:${spec.port}`,
    store: new PgBranchStore({ pool: storePool }),
    resources: [pgResource({ name: 'accounts', pool })],
    resourceFor: (m) => (m.startsWith('/test.Bank/') ? 'accounts' : undefined),
    coordinatorAddressFor: addressOf,
    recoveryIntervalMs: 1_000,
    inDoubtAfterMs: 1_000,
    deadlineGraceMs: 200,
  });
  await participant.start();
  const move =
    (sign: 1 | -1) =>
    async ({ request }: { request: TransferMove }) => {
      const pg = currentPg();
      const { xid } = currentBranch();
      await pg.query(`SET LOCAL lock_timeout = '1s'`);
      const r = await pg.query<{ balance: string }>(
        'UPDATE accounts SET balance = balance + $2 WHERE id = $1 AND balance + $2 >= 0 RETURNING balance',
        [request.account, sign * request.amount],
      );
      if (r.rowCount === 0) throw new FailedPreconditionError(`insufficient funds in ${request.account}`);
      await pg.query('INSERT INTO ledger VALUES ($1, $2, $3)', [xid, request.account, sign * request.amount]);
      return { balance: Number(r.rows[0].balance) };
    };
  const server = await startServer({
    host: '127.0.0.1',
    port: spec.port,
    registry,
    instance: { instanceId: spec.instanceId },
    middleware: [txServerMiddleware(participant)],
    services: [
      { name: spec.service, definition: ParticipantService, handlers: participantHandlers(participant) },
      { name: spec.service, definition: BANK_DEFINITION, handlers: { debit: move(-1), credit: move(1) } },
    ],
  });
  process.stdout.write(JSON.stringify({ ready: true, address: `127.0.0.1:${spec.port}` }) + '\n');
  process.on('SIGTERM', () => {
    void (async () => {
      await server.stop().catch(() => undefined);
      await participant.stop().catch(() => undefined);
      await registry.close().catch(() => undefined);
      process.exit(0);
    })();
  });
}

main().catch((err) => {
  process.stderr.write(`ha bank failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
