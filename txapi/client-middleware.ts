/**
 * The initiator's side of context propagation, in both shapes a call can take: DMTP's client middleware
 * (rpc/middleware.ts) and a plain grpc-js interceptor for code that calls with a grpc-js client directly.
 * Inside a transaction each call carries the context in metadata and its deadline is capped by the
 * transaction's; the `dmtp-branch` trailers of the answer join the transaction's branch list, which goes to the
 * coordinator with Commit. A call that failed reports no branch: its branch is rolled back at the deadline.
 */
import { InterceptingCall, type Interceptor, type Metadata, type StatusObject } from '@grpc/grpc-js';
import type { ClientMiddleware } from '../rpc/middleware';
import { addBranch, currentTx, type TxContext } from './context';
import { readBranchTrailers, writeContext } from './tx-metadata';

function collect(ctx: TxContext, trailers: Metadata | undefined): void {
  for (const ref of readBranchTrailers(trailers)) addBranch(ctx, ref);
}

/** Client middleware for DMTP's client (rpc/). */
export const txClientMiddleware: ClientMiddleware = async (call, next) => {
  const ctx = currentTx();
  if (!ctx || !ctx.active) return next(call);
  writeContext(call.metadata, ctx);
  const result = await next({ ...call, deadline: Math.min(call.deadline, ctx.deadlineAtMs) });
  collect(ctx, result.trailers);
  return result;
};

/**
 * The same for a plain grpc-js client: `new Client(address, creds, { interceptors: [txGrpcInterceptor] })`.
 * The context is the one current when the call starts.
 */
export const txGrpcInterceptor: Interceptor = (options, nextCall) => {
  const ctx = currentTx();
  if (!ctx || !ctx.active) return new InterceptingCall(nextCall(options));
  const deadline = options.deadline instanceof Date ? options.deadline.getTime() : options.deadline;
  const capped = Math.min(deadline ?? Infinity, ctx.deadlineAtMs);
  return new InterceptingCall(nextCall({ ...options, deadline: capped }), {
    start(metadata, _listener, next) {
      writeContext(metadata, ctx);
      next(metadata, {
        onReceiveStatus(status: StatusObject, nextStatus: (s: StatusObject) => void) {
          if (status.code === 0) collect(ctx, status.metadata);
          nextStatus(status);
        },
      });
    },
  });
};
