/**
 * The Coordinator gRPC service: a thin adapter over the TransactionManager. It decodes (a request that is not
 * valid protobuf is INVALID_ARGUMENT, not a decoder crash), checks that required fields are present (naming the
 * field), calls the manager, and maps every error through the one `toStatus()` table of common/errors.
 */
import {
  Metadata,
  type handleUnaryCall,
  type ServiceDefinition,
  type ServiceError,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { trace } from '@opentelemetry/api';
import { InvalidArgumentError, logger, SPAN_ATTRIBUTES, toStatus, xidAttributes } from '../common';
import { CoordinatorService, type CoordinatorServer } from '../proto';
import { assertDecoded, tolerantDecoders } from '../rpc/malformed';
import { ANSWERED_TRAILER } from '../rpc/not-sent';
import type { TransactionManager } from './manager';
import { TxState } from '../proto/gen/dmtp/v1/types';
import { isCommit, isDecided } from './state-machine';

const log = logger('coordinator:service');
/** CoordinatorService with decoders that turn undecodable bytes into INVALID_ARGUMENT, not INTERNAL. */
export const CoordinatorServiceDefinition: ServiceDefinition = tolerantDecoders(CoordinatorService);

function required(value: unknown, field: string): void {
  if (value === undefined || value === null || value === '')
    throw new InvalidArgumentError(`${field} is required`);
}

function unary<Req, Res>(method: string, fn: (req: Req) => Res | Promise<Res>): handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const req = call.request as Req;
    Promise.resolve()
      .then(() => {
        assertDecoded(method, req);
        nameTransaction(req);
        return fn(req);
      })
      .then(
        (res) => callback(null, res),
        (err) => {
          const s = toStatus(err);
          if (s.code === 13) log.error(`${method} failed`, { err: err as Error });
          // Marked as the coordinator's own answer (not a broken connection): see rpc's ANSWERED_TRAILER.
          const metadata = new Metadata();
          metadata.set(ANSWERED_TRAILER, '1');
          callback({ code: s.code, details: s.details, metadata } as ServiceError);
        },
      );
  };
}

/** The xid a request names, on the call's span (the coordinator's `tracing`; no span, nothing to do). */
function nameTransaction(req: unknown): void {
  trace.getActiveSpan()?.setAttributes(xidAttributes(req));
}

/** The outcome a Commit or Rollback answered, on the call's span. */
function nameOutcome(state: TxState): void {
  const outcome = isCommit(state) ? 'committed' : isDecided(state) ? 'aborted' : undefined;
  if (outcome !== undefined) trace.getActiveSpan()?.setAttribute(SPAN_ATTRIBUTES.outcome, outcome);
}

/** What the service calls: one manager, or (HA) a router over the own and the taken-over managers. */
export type CoordinatorBackend = Pick<
  TransactionManager,
  'begin' | 'enlist' | 'commit' | 'rollback' | 'get' | 'list' | 'resolve' | 'settleBranch' | 'queryOutcome'
>;

export function coordinatorService(m: CoordinatorBackend): CoordinatorServer & UntypedServiceImplementation {
  return {
    begin: unary('Begin', async (r) => {
      const b = await m.begin({
        xid: r.xid || undefined,
        timeoutMs: r.timeoutMs,
        initiator: r.initiator,
        labels: r.labels,
      });
      return { xid: b.xid, deadlineAtMs: b.deadlineAtMs, coordinatorId: b.coordinatorId };
    }),
    enlist: unary('Enlist', async (r) => {
      required(r.xid, 'xid');
      required(r.branch, 'branch');
      return { state: await m.enlist(r.xid, r.branch!) };
    }),
    commit: unary('Commit', async (r) => {
      required(r.xid, 'xid');
      const o = await m.commit(r.xid, {
        branches: r.branches,
        events: r.events,
        timeoutMs: r.timeoutMs,
        initiator: r.initiator,
        labels: r.labels,
        firstAttempt: r.firstAttempt,
      });
      nameOutcome(o.state);
      return { state: o.state, abortReason: o.abortReason };
    }),
    rollback: unary('Rollback', async (r) => {
      required(r.xid, 'xid');
      const state = await m.rollback(r.xid, r.reason || undefined, r.branches, {
        firstAttempt: r.firstAttempt,
      });
      nameOutcome(state);
      return { state };
    }),
    get: unary('Get', async (r) => {
      required(r.xid, 'xid');
      return { transaction: await m.get(r.xid) };
    }),
    list: unary('List', (r) =>
      m.list({
        state: r.state,
        olderThanMs: r.olderThanMs,
        pageSize: r.pageSize,
        pageToken: r.pageToken,
        service: r.service,
        instanceId: r.instanceId,
      }),
    ),
    resolve: unary('Resolve', async (r) => {
      required(r.xid, 'xid');
      required(r.outcome || undefined, 'outcome');
      return { state: await m.resolve(r.xid, r.outcome, r.reason || undefined) };
    }),
    settleBranch: unary('SettleBranch', async (r) => {
      required(r.xid, 'xid');
      required(r.branchId, 'branch_id');
      return m.settleBranch(r.xid, r.branchId, r.reason || undefined);
    }),
    queryOutcome: unary('QueryOutcome', async (r) => {
      required(r.xid, 'xid');
      return { outcome: await m.queryOutcome(r.xid) };
    }),
  };
}
