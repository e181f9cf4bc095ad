/** A promise-based client of the Coordinator gRPC service for tests (plain grpc-js, no DMTP client helpers). */
import { credentials, makeGenericClientConstructor, type Client, type ServiceError } from '@grpc/grpc-js';
import { CoordinatorService } from '../../proto';

const Ctor = makeGenericClientConstructor(CoordinatorService, 'Coordinator');
type Svc = typeof CoordinatorService;
type Req<K extends keyof Svc> = Parameters<Svc[K]['requestSerialize']>[0];
type Res<K extends keyof Svc> = ReturnType<Svc[K]['responseDeserialize']>;

export type CoordinatorClient = {
  [K in keyof Svc]: (req: Partial<Req<K>>, timeoutMs?: number) => Promise<Res<K>>;
} & {
  close(): void;
  raw: Client;
};

const EMPTY: { [K in keyof Svc]: () => Req<K> } = {
  begin: () => ({ xid: '', timeoutMs: 0, initiator: '', labels: {} }),
  enlist: () => ({ xid: '', branch: undefined }),
  commit: () => ({
    xid: '',
    branches: [],
    events: [],
    timeoutMs: 0,
    initiator: '',
    labels: {},
    firstAttempt: false,
  }),
  rollback: () => ({ xid: '', reason: '', branches: [], firstAttempt: false }),
  get: () => ({ xid: '' }),
  list: () => ({ state: 0, olderThanMs: 0, pageSize: 0, pageToken: '', service: '', instanceId: '' }),
  resolve: () => ({ xid: '', outcome: 0, reason: '' }),
  settleBranch: () => ({ xid: '', branchId: '', reason: '' }),
  queryOutcome: () => ({ xid: '', branchId: '' }),
};

export function coordinatorClient(address: string): CoordinatorClient {
  const raw: Client = new Ctor(address, credentials.createInsecure());
  const out = { close: () => raw.close(), raw } as CoordinatorClient;
  for (const name of Object.keys(CoordinatorService) as (keyof Svc)[]) {
    const m = CoordinatorService[name];
    (out as unknown as Record<string, unknown>)[name] = (req: object, timeoutMs = 10_000) =>
      new Promise((resolve, reject) =>
        raw.makeUnaryRequest(
          m.path,
          m.requestSerialize as (v: unknown) => Buffer,
          m.responseDeserialize,
          { ...EMPTY[name](), ...req },
          { deadline: Date.now() + timeoutMs },
          (err: ServiceError | null, res?: unknown) => (err ? reject(err) : resolve(res)),
        ),
      );
  }
  return out;
}
