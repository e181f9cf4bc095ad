/**
 * A participant service for the transaction benchmark, run as its own process: no business work. One
 * no-op business method (`/bench.Noop/Noop`, echoes its bytes) on a no-op resource that votes PREPARED (so a
 * transaction really runs both phases), built with the txapi Participant SDK (file branch store,
 * group-committed) and served by rpc's server (unary + the multiplexed path), registered in etcd.
 *
 * `npx tsx test/support/bench-participant.ts` with BENCH_PARTICIPANT (JSON of ParticipantSpec); prints
 * `{"ready":true,"address":…}`; stops on SIGTERM. Without a transaction context the same method is a plain
 * call (the baseline of the benchmark).
 */
import { EtcdRegistry } from '../../registry';
import { freePort } from './bench-process';
import { ParticipantService } from '../../proto';
import { startServer } from '../../rpc/server';
import {
  defineResource,
  FileBranchStore,
  participantHandlers,
  Participant,
  txServerMiddleware,
} from '../../txapi';

export interface ParticipantSpec {
  service: string;
  instanceId: string;
  prefix: string;
  etcd: string[];
  /** The branch store's file. */
  storePath: string;
}

const id = (b: Buffer) => b;
const method = (path: string) => ({
  path,
  requestStream: false as const,
  responseStream: false as const,
  requestSerialize: id,
  requestDeserialize: id,
  responseSerialize: id,
  responseDeserialize: id,
});

export const NOOP_DEFINITION = { noop: method('/bench.Noop/Noop') };

async function main(): Promise<void> {
  const spec = JSON.parse(process.env.BENCH_PARTICIPANT ?? '{}') as ParticipantSpec;
  const registry = new EtcdRegistry({ hosts: spec.etcd, prefix: spec.prefix, leaseTtlSeconds: 5 });
  const noop = defineResource<undefined>({
    name: 'noop',
    volatileWork: true,
    prepare: async () => ({ vote: 'prepared' }),
    commit: async () => ({ committed: true }),
    rollback: async () => undefined,
  });
  const port = await freePort();
  const participant = new Participant({
    service: spec.service,
    instanceId: spec.instanceId,
    address: `127.0.0.1:${port}`,
    store: new FileBranchStore({ path: spec.storePath }),
    resources: [noop],
    resourceFor: (m) => (m.startsWith('/bench.Noop/') ? 'noop' : undefined),
    recoveryIntervalMs: 60_000,
  });
  await participant.start();
  const server = await startServer({
    registry,
    instance: { instanceId: spec.instanceId },
    middleware: [txServerMiddleware(participant)],
    port,
    drainDelayMs: 0,
    gracePeriodMs: 1_000,
    services: [
      { name: spec.service, definition: ParticipantService, handlers: participantHandlers(participant) },
      { name: spec.service, definition: NOOP_DEFINITION, handlers: { noop: ({ request }) => request } },
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
      await registry.close().catch(() => undefined);
      process.exit(0);
    })();
  });
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`bench participant failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  });
}
