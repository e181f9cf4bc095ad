/**
 * The initiator's side of context propagation, in both shapes a call can take: DMTP's client middleware
 * (rpc/middleware.ts) and a plain grpc-js interceptor for code that calls with a grpc-js client directly.
 * Inside a transaction each call carries the context in metadata and its deadline is capped by the
 * transaction's; the `dmtp-branch` trailers of the answer join the transaction's branch list, which goes to the
 * coordinator with Commit. A call that failed reports no branch: its branch is rolled back at the deadline;
 * one that may have run (a timeout, a lost connection) makes the transaction rollback-only.
 * Commit waits for the calls still in flight; a call started once commit or rollback began is refused.
 */
import {
  InterceptingCall,
  Metadata,
  status as Status,
  type Interceptor,
  type StatusObject,
} from '@grpc/grpc-js';
import { DmtpError, logger, MD } from '../common';
import type { ClientMiddleware } from '../rpc/middleware';
import { ANSWERED_TRAILER, isNotSent } from '../rpc/not-sent';
import { errorTrailers } from '../rpc/transport';
import {
  addBranch,
  addFailedBranch,
  MAY_HAVE_RUN,
  callEnded,
  callFailed,
  callRefused,
  callStarted,
  currentTx,
  type TxContext,
} from './context';
import { readBranchTrailers, writeContext } from './tx-metadata';

const log = logger('txapi:tx');

/** Methods already warned of as answered by a server that ignored the transaction (the oldest forgotten past 1,000). */
const ignoredBy = new Set<string>();
const IGNORED_REMEMBERED = 1_000;
let ignoredAnswers = 0;

/**
 * Calls made in a transaction, by this process, that a server answered without taking part (see
 * `answeredWithout`): each one, not once per method (InitiatorMetrics exports it).
 */
export function ignoredCallCount(): number {
  return ignoredAnswers;
}

/**
 * A call answered without its transaction: no branch and no word that a participant took the context
 * (`MD.taken`) — a server with no participant middleware, or not a DMTP participant at all. Its work is not part of
 * the transaction and stays whatever the outcome: said once per method, as the misconfiguration it almost always is.
 */
function answeredWithout(ctx: TxContext, method: string, instanceId?: string): void {
  ignoredAnswers++;
  if (ignoredBy.has(method)) return;
  if (ignoredBy.size >= IGNORED_REMEMBERED) ignoredBy.delete(ignoredBy.values().next().value!);
  ignoredBy.add(method);
  log.warn(
    'a call in a transaction was answered by a server that ignored it: its work is not part of the ' +
      'transaction and stays if it aborts (serve the method with txServerMiddleware(participant), or make the ' +
      'call outside the transaction or with a client without txClientMiddleware); said once per method',
    { xid: ctx.xid, method, ...(instanceId ? { instanceId } : {}) },
  );
}

function collect(ctx: TxContext, trailers: Metadata | undefined, method: string, instanceId?: string): void {
  let refs, failed;
  try {
    refs = readBranchTrailers(trailers);
    failed = readBranchTrailers(trailers, MD.failedBranch);
  } catch (err) {
    if (err instanceof DmtpError && instanceId) err.details.instanceId = instanceId;
    throw err;
  }
  if (refs.length === 0 && failed.length === 0 && !trailers?.get(MD.taken).length)
    answeredWithout(ctx, method, instanceId);
  for (const ref of failed)
    addFailedBranch(ctx, ref, 'an onward call of a participant failed after doing work');
  for (const ref of refs) addBranch(ctx, ref);
  const doomed = trailers?.get(MD.rollbackOnly)[0];
  if (doomed !== undefined) ctx.rollbackOnly ??= `a participant reported: ${String(doomed)}`;
}

/**
 * What the error answer of a call made in `ctx` says of the transaction: the branches its handler's onward calls
 * did work in before the handler failed (`dmtp-branch-failed`), and a rollback-only reason. A report that cannot
 * be read leaves those branches unknown, and the transaction rollback-only.
 */
function collectFailed(ctx: TxContext, trailers: Metadata | undefined, call: string, message: string): void {
  if (!trailers) return;
  const why = `the call ${call} failed (${message.slice(0, 200)}) after its handler's onward calls did work`;
  try {
    for (const ref of readBranchTrailers(trailers, MD.failedBranch)) addFailedBranch(ctx, ref, why);
  } catch (err) {
    ctx.rollbackOnly ??= `${why}, in branches this caller cannot tell: ${(err as Error).message}`;
  }
  const doomed = trailers.get(MD.rollbackOnly)[0];
  if (doomed !== undefined) ctx.rollbackOnly ??= `a participant reported: ${String(doomed)}`;
}

/**
 * Client middleware for DMTP's client (rpc/). A call made in a transaction whose commit or rollback started is
 * refused (FAILED_PRECONDITION) and not sent: sent without the context its work would be permanent whatever the
 * transaction's outcome. A call still in flight when commit starts is waited for: its branch belongs in Commit.
 *
 * In a transaction a call goes down as not idempotent, whatever its caller said: the client's retries run below
 * this middleware, which sees only the last attempt, so an earlier attempt that may have run (its work in a
 * branch the transaction holds, its answer and trailers lost) would hide behind a retry's success and commit: the
 * call applied twice. Such an attempt makes the transaction rollback-only anyway, so a retry could not save it.
 * An attempt never sent (`notSent`) is still retried elsewhere: it did nothing.
 */
export const txClientMiddleware: ClientMiddleware = async (call, next) => {
  const ctx = currentTx();
  if (!ctx) return next(call);
  if (!ctx.active) throw callRefused(ctx, call.method);
  // A copy: the caller's Metadata (often one object reused for every call) must not keep this transaction's xid.
  const metadata = call.metadata.clone();
  writeContext(metadata, ctx);
  callStarted(ctx);
  try {
    const deadline = Math.min(call.deadline, ctx.deadlineAtMs);
    const result = await next({ ...call, metadata, deadline, idempotent: false });
    collect(ctx, result.trailers, call.method, result.instanceId);
    return result;
  } catch (err) {
    collectFailed(ctx, errorTrailers(err), call.method, (err as Error)?.message ?? String(err));
    callFailed(ctx, err);
    throw err;
  } finally {
    callEnded(ctx);
  }
};

/**
 * The same for a plain grpc-js client: `new Client(address, creds, { interceptors: [txGrpcInterceptor] })`.
 * The context is the one current when the call starts. A failure makes the transaction rollback-only by the
 * rule of DMTP's client (`callFailed`), read from the status: an answer whose report cannot be read (INTERNAL
 * for the caller, yet it ran), or a failure no answer explains, unless grpc-js says the call never left
 * (`isNotSent`: it did nothing, so the transaction goes on as it was).
 */
export const txGrpcInterceptor: Interceptor = (options, nextCall) => {
  const ctx = currentTx();
  if (!ctx) return new InterceptingCall(nextCall(options));
  const path = options.method_definition.path;
  // No call is made below: a grpc-js call created and never started nor cancelled keeps its channel from going
  // idle and, with a deadline, holds a timer that keeps the process alive until then.
  if (!ctx.active) return new InterceptingCall(refusedCall(callRefused(ctx, path)));
  const deadline = options.deadline instanceof Date ? options.deadline.getTime() : options.deadline;
  const capped = Math.min(deadline ?? Infinity, ctx.deadlineAtMs);
  return new InterceptingCall(nextCall({ ...options, deadline: capped }), {
    start(callerMetadata, _listener, next) {
      const metadata = callerMetadata.clone();
      writeContext(metadata, ctx);
      callStarted(ctx);
      next(metadata, {
        onReceiveStatus(status: StatusObject, nextStatus: (s: StatusObject) => void) {
          let s = status;
          if (status.code === Status.OK) {
            try {
              collect(ctx, status.metadata, path);
            } catch (err) {
              s = { ...status, code: Status.INTERNAL, details: (err as Error).message };
              // It ran at its instance; where its work and its handler's onward work sit is what cannot be read.
              mayHaveRun(ctx, path, s.details);
            }
          } else if (status.metadata?.get(ANSWERED_TRAILER).length) {
            collectFailed(ctx, status.metadata, path, status.details);
          } else if (MAY_HAVE_RUN.has(status.code) && !isNotSent(status.code, status.details)) {
            mayHaveRun(ctx, path, status.details);
          }
          callEnded(ctx);
          nextStatus(s);
        },
      });
    },
  });
};

/**
 * A call to `path` over a grpc-js client that may have run with no answer saying what it did: its work, and its
 * handler's onward work, may sit in branches of this transaction that other calls report. Rollback-only, as for
 * DMTP's client (callFailed): never half applied.
 */
function mayHaveRun(ctx: TxContext, path: string, details: string): void {
  ctx.rollbackOnly ??=
    `a call to ${path} failed after it was sent (${details}); ` +
    'over a grpc-js client the instance that may have run it is unknown';
}

/** The call below `txGrpcInterceptor` for one it refused: answers `err` when started, sends nothing. */
function refusedCall(err: DmtpError): ConstructorParameters<typeof InterceptingCall>[0] {
  return {
    start(_metadata, listener) {
      listener?.onReceiveStatus?.({ code: err.code, details: err.message, metadata: new Metadata() });
    },
    sendMessageWithContext() {},
    sendMessage() {},
    startRead() {},
    halfClose() {},
    cancelWithStatus() {},
    getPeer: () => '',
    getAuthContext: () => null,
  };
}
