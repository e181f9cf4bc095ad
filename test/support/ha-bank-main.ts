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
import { ParticipantService } from '../../proto';
import { EtcdRegistry } from '../../registry';
import { startServer } from '../../rpc/server';
import { participantHandlers, Participant, PgBranchStore, pgResource, txServerMiddleware } from '../../txapi';
import { BANK_DEFINITION, bankMove } from './txapi-bank-main';

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
  const participant = new Participant({
    service: spec.service,
    instanceId: spec.instanceId,
    address: `127.0.0.1:${spec.port}`,
    store: new PgBranchStore({ pool: storePool }),
    resources: [pgResource({ name: 'accounts', pool })],
    resourceFor: (m) => (m.startsWith('/test.Bank/') ? 'accounts' : undefined),
    registry, // the default route lookup: after a takeover, in-doubt branches ask the taker
    recoveryIntervalMs: 1_000,
    inDoubtAfterMs: 1_000,
    deadlineGraceMs: 200,
  });
  await participant.start();
  const server = await startServer({
    host: '127.0.0.1',
    port: spec.port,
    registry,
    instance: { instanceId: spec.instanceId },
    middleware: [txServerMiddleware(participant)],
    services: [
      { name: spec.service, definition: ParticipantService, handlers: participantHandlers(participant) },
      {
        name: spec.service,
        definition: BANK_DEFINITION,
        handlers: { debit: bankMove(-1), credit: bankMove(1) },
      },
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
