/**
 * Plain grpc-js plumbing for the txapi tests, until rpc's server and client helpers are used instead: serve
 * MethodEntries through server middleware, call JSON methods with the txGrpcInterceptor, and a small in-memory
 * coordinator (phase 1 + phase 2 over the ParticipantService, QueryOutcome, scripted answers) — a stand-in with
 * the wire behaviour txapi relies on, not the real coordinator.
 */
import {
  credentials,
  makeGenericClientConstructor,
  Metadata,
  Server,
  ServerCredentials,
  status,
  type Client,
  type Interceptor,
  type ServiceDefinition,
  type ServiceError,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { fromStatus, toStatus } from '../../common';
import {
  CoordinatorService,
  ParticipantService,
  type CommitRequest,
  type CommitResponse,
  type QueryOutcomeRequest,
  type RollbackRequest,
} from '../../proto';
import { Outcome, TxState, Vote, type BranchRef } from '../../proto/gen/dmtp/v1/types';
import { invokeHandler, type MethodEntry, type ServerMiddleware } from '../../rpc/middleware';
import { ANSWERED_TRAILER } from '../../rpc/not-sent';

export interface Served {
  address: string;
  stop(): Promise<void>;
}

function definitionOf(entries: MethodEntry[]): ServiceDefinition {
  const def: Record<string, unknown> = {};
  for (const e of entries) {
    def[e.path] = {
      path: e.path,
      requestStream: false,
      responseStream: false,
      requestSerialize: (v: Buffer) => v,
      requestDeserialize: e.deserialize,
      responseSerialize: e.serialize,
      responseDeserialize: (v: Buffer) => v,
    };
  }
  return def as ServiceDefinition;
}

/** Serves `entries` on 127.0.0.1 (port 0 = any), each call through `mws`. */
export async function serveEntries(
  entries: MethodEntry[],
  mws: ServerMiddleware[] = [],
  port = 0,
): Promise<Served> {
  const server = new Server();
  const impl: UntypedServiceImplementation = {};
  for (const e of entries) {
    impl[e.path] = (
      call: {
        request: unknown;
        metadata: Metadata;
        getDeadline(): Date | number;
        getPeer(): string;
        on(ev: string, f: () => void): void;
      },
      cb: (err: Partial<ServiceError> | null, res?: unknown, trailers?: Metadata) => void,
    ) => {
      const trailers = new Metadata();
      const ac = new AbortController();
      call.on('cancelled', () => ac.abort());
      const dl = call.getDeadline();
      const deadline = dl instanceof Date ? dl.getTime() : Number(dl);
      invokeHandler(
        e,
        {
          method: e.path,
          request: call.request,
          metadata: call.metadata,
          deadline,
          trailers,
          signal: ac.signal,
          peer: call.getPeer(),
        },
        mws,
      ).then(
        (res) => cb(null, res, trailers),
        (err) => {
          const s = toStatus(err);
          trailers.set(ANSWERED_TRAILER, '1'); // the server's own answer, as DMTP's server marks it
          cb({ code: s.code, details: s.details, metadata: trailers });
        },
      );
    };
  }
  server.addService(definitionOf(entries), impl);
  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${port}`, ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return {
    address: `127.0.0.1:${bound}`,
    stop: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
  };
}

/** A JSON-coded unary method (test business services need no .proto). */
export function jsonMethod<Req, Res>(
  path: string,
  handler: MethodEntry<Req, Res>['handler'],
): MethodEntry<Req, Res> {
  return {
    path,
    deserialize: (b) => JSON.parse(b.toString('utf8')) as Req,
    serialize: (v) => Buffer.from(JSON.stringify(v ?? null)),
    handler,
  };
}

type UnaryFn = (
  req: unknown,
  md: Metadata,
  opts: { deadline: number },
  cb: (err: ServiceError | null, res?: unknown) => void,
) => void;

/** A client of JSON methods on `address`, with the given grpc-js interceptors (e.g. txGrpcInterceptor). */
export class JsonClient {
  private readonly client: Client;

  constructor(address: string, paths: string[], interceptors: Interceptor[] = []) {
    const def: Record<string, unknown> = {};
    for (const p of paths) {
      def[p] = {
        path: p,
        requestStream: false,
        responseStream: false,
        requestSerialize: (v: unknown) => Buffer.from(JSON.stringify(v)),
        requestDeserialize: (b: Buffer) => b,
        responseSerialize: (b: Buffer) => b,
        responseDeserialize: (b: Buffer) => JSON.parse(b.toString('utf8')),
      };
    }
    const Ctor = makeGenericClientConstructor(def as ServiceDefinition, 'json');
    this.client = new Ctor(address, credentials.createInsecure(), { interceptors });
  }

  call<Res = unknown>(path: string, req: unknown, md = new Metadata(), timeoutMs = 10_000): Promise<Res> {
    const fn = (this.client as unknown as Record<string, UnaryFn>)[path].bind(this.client);
    return new Promise((resolve, reject) =>
      fn(req, md, { deadline: Date.now() + timeoutMs }, (err, res) =>
        err ? reject(fromStatus(err.code, err.details, { cause: err })) : resolve(res as Res),
      ),
    );
  }

  close(): void {
    this.client.close();
  }
}

/** A client of the ParticipantService at `address` (what a coordinator sends). */
export function participantClient(address: string) {
  const Ctor = makeGenericClientConstructor(
    ParticipantService as unknown as ServiceDefinition,
    'dmtp.v1.Participant',
  );
  const c = new Ctor(address, credentials.createInsecure()) as unknown as Record<string, UnaryFn> & Client;
  const call = <Res>(m: string, req: unknown, timeoutMs = 5_000) =>
    new Promise<Res>((resolve, reject) =>
      c[m].call(c, req, new Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) =>
        err ? reject(fromStatus(err.code, err.details, { cause: err })) : resolve(res as Res),
      ),
    );
  return {
    prepare: (xid: string, branchId: string, resource = '') =>
      call<{ vote: Vote; reason: string }>('prepare', { xid, branchId, resource }),
    commit: (xid: string, branchId: string, onePhase = false, resource = '') =>
      call<{ committed: boolean; reason: string }>('commit', { xid, branchId, resource, onePhase }),
    rollback: (xid: string, branchId: string, reason = '', resource = '') =>
      call<object>('rollback', { xid, branchId, resource, reason }),
    close: () => c.close(),
  };
}

export interface StubCoordinator extends Served {
  /** Decisions made (xid → outcome), and what QueryOutcome answers (unknown xid ⇒ ABORT: presumed abort). */
  outcomes: Map<string, Outcome>;
  commits: CommitRequest[];
  rollbacks: RollbackRequest[];
  queries: QueryOutcomeRequest[];
}

/**
 * A coordinator stand-in: Commit prepares every branch (one-phase for a single branch), decides, and commits or
 * rolls back; Rollback rolls the given branches back; QueryOutcome answers from `outcomes`. `phase2: false`
 * decides without phase 2 (leaving prepared branches in doubt, for recovery tests).
 */
export async function startStubCoordinator(
  opts: { port?: number; phase2?: boolean } = {},
): Promise<StubCoordinator> {
  const outcomes = new Map<string, Outcome>();
  const commits: CommitRequest[] = [];
  const rollbacks: RollbackRequest[] = [];
  const queries: QueryOutcomeRequest[] = [];
  const each = async (
    branches: BranchRef[],
    fn: (c: ReturnType<typeof participantClient>, b: BranchRef) => Promise<unknown>,
  ) =>
    Promise.all(
      branches.map(async (b) => {
        const c = participantClient(b.address);
        try {
          return await fn(c, b);
        } finally {
          c.close();
        }
      }),
    );
  const server = new Server();
  const impl = {
    begin: (_c: unknown, cb: (e: unknown) => void) => cb({ code: status.UNIMPLEMENTED, details: 'stub' }),
    enlist: (_c: unknown, cb: (e: unknown) => void) => cb({ code: status.UNIMPLEMENTED, details: 'stub' }),
    get: (_c: unknown, cb: (e: unknown) => void) => cb({ code: status.UNIMPLEMENTED, details: 'stub' }),
    list: (_c: unknown, cb: (e: unknown) => void) => cb({ code: status.UNIMPLEMENTED, details: 'stub' }),
    resolve: (_c: unknown, cb: (e: unknown) => void) => cb({ code: status.UNIMPLEMENTED, details: 'stub' }),
    commit: (call: { request: CommitRequest }, cb: (e: unknown, r?: CommitResponse) => void) => {
      const req = call.request;
      commits.push(req);
      (async (): Promise<CommitResponse> => {
        if (req.branches.length === 1 && opts.phase2 !== false) {
          const [r] = await each(req.branches, (c, b) => c.commit(req.xid, b.branchId, true, b.resource));
          const ok = (r as { committed: boolean }).committed;
          outcomes.set(req.xid, ok ? Outcome.OUTCOME_COMMIT : Outcome.OUTCOME_ABORT);
          return { state: ok ? TxState.TX_STATE_COMMITTED : TxState.TX_STATE_ABORTED, abortReason: '' };
        }
        const votes = await each(req.branches, (c, b) =>
          c
            .prepare(req.xid, b.branchId, b.resource)
            .catch((e: Error) => ({ vote: Vote.VOTE_ABORT, reason: e.message })),
        );
        const no = votes.find((v) => (v as { vote: Vote }).vote === Vote.VOTE_ABORT) as
          { reason: string } | undefined;
        outcomes.set(req.xid, no ? Outcome.OUTCOME_ABORT : Outcome.OUTCOME_COMMIT);
        if (opts.phase2 !== false) {
          const todo = req.branches.filter(
            (_, i) => (votes[i] as { vote: Vote }).vote !== Vote.VOTE_READ_ONLY,
          );
          await each(todo, (c, b) =>
            no
              ? c.rollback(req.xid, b.branchId, no.reason, b.resource)
              : c.commit(req.xid, b.branchId, false, b.resource),
          );
        }
        return no
          ? { state: TxState.TX_STATE_ABORTED, abortReason: no.reason }
          : { state: TxState.TX_STATE_COMMITTED, abortReason: '' };
      })().then(
        (r) => cb(null, r),
        (e) => cb({ code: status.INTERNAL, details: String(e) }),
      );
    },
    rollback: (call: { request: RollbackRequest }, cb: (e: unknown, r?: unknown) => void) => {
      rollbacks.push(call.request);
      outcomes.set(call.request.xid, Outcome.OUTCOME_ABORT);
      each(call.request.branches, (c, b) =>
        c.rollback(call.request.xid, b.branchId, call.request.reason, b.resource),
      ).then(
        () => cb(null, { state: TxState.TX_STATE_ABORTED }),
        (e) => cb({ code: status.INTERNAL, details: String(e) }),
      );
    },
    queryOutcome: (call: { request: QueryOutcomeRequest }, cb: (e: unknown, r?: unknown) => void) => {
      queries.push(call.request);
      cb(null, { outcome: outcomes.get(call.request.xid) ?? Outcome.OUTCOME_ABORT });
    },
  };
  server.addService(
    CoordinatorService as unknown as ServiceDefinition,
    impl as unknown as UntypedServiceImplementation,
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${opts.port ?? 0}`, ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return {
    address: `127.0.0.1:${port}`,
    outcomes,
    commits,
    rollbacks,
    queries,
    stop: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
  };
}
