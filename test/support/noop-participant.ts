/**
 * A participant service whose one business method (`/bench.Noop/Noop`, NOOP_DEFINITION) does nothing, on a resource
 * that votes PREPARED, its branches in a file store, served by rpc's server and registered; and a DMTP client of it
 * that carries transactions. For tests of what surrounds a transaction (TLS, tracing), in the test's process.
 */
import * as path from 'node:path';
import type { Registry } from '../../registry';
import {
  client,
  startServer,
  type ClientMiddleware,
  type RpcServer,
  type ServerMiddleware,
  type TlsOptions,
} from '../../rpc';
import {
  defineResource,
  FileBranchStore,
  Participant,
  participantBinding,
  txClientMiddleware,
  txServerMiddleware,
  type ParticipantOptions,
} from '../../txapi';
import { NOOP_DEFINITION } from './bench-participant';
import { freePort } from './txapi-bank';

export interface NoopParticipant {
  p: Participant;
  server: RpcServer;
  /** A client of its business method, carrying the transaction it is called in. */
  c: ReturnType<typeof client<typeof NOOP_DEFINITION>>;
  service: string;
  /** Stops the client, the server, then the participant. */
  stop(): Promise<void>;
}

export async function startNoopParticipant(o: {
  service: string;
  registry: Registry;
  /** Where its branch file goes. */
  dir: string;
  tls?: TlsOptions;
  /** Server middleware before the transaction middleware (e.g. tracing). */
  serverMiddleware?: ServerMiddleware[];
  /** Client middleware before the transaction middleware. */
  clientMiddleware?: ClientMiddleware[];
  /** More participant options (recovery timings, tracing). */
  participant?: Partial<ParticipantOptions>;
}): Promise<NoopParticipant> {
  const { service, registry, tls } = o;
  const port = await freePort();
  const p = new Participant({
    service,
    instanceId: `${service}-1`,
    address: `127.0.0.1:${port}`,
    store: new FileBranchStore({ path: path.join(o.dir, `${service}.jsonl`) }),
    resources: [
      defineResource<undefined>({
        name: 'noop',
        volatileWork: true,
        prepare: async () => ({ vote: 'prepared' }),
        commit: async () => ({ committed: true }),
        rollback: async () => undefined,
      }),
    ],
    tls,
    ...o.participant,
  });
  await p.start();
  const server = await startServer({
    registry,
    port,
    tls,
    instance: { instanceId: `${service}-1` },
    middleware: [...(o.serverMiddleware ?? []), txServerMiddleware(p)],
    services: [
      participantBinding(p),
      { name: service, definition: NOOP_DEFINITION, handlers: { noop: ({ request }) => request } },
    ],
    drainDelayMs: 0,
    gracePeriodMs: 500,
  });
  const c = client(registry, service, NOOP_DEFINITION, {
    tls,
    middleware: [...(o.clientMiddleware ?? []), txClientMiddleware],
  });
  return {
    p,
    server,
    c,
    service,
    async stop() {
      c.close();
      await server.stop();
      await p.stop();
    },
  };
}
