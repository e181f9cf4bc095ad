/**
 * The participant's server middleware: a call that carries a transaction context (validated: malformed or
 * forged context is INVALID_ARGUMENT, an expired transaction FAILED_PRECONDITION) enlists the branch of the
 * method's resource, runs the handler inside it (`currentBranch()`, and `currentTx()` so onward calls carry the
 * transaction), and reports the branch — with any branches of onward calls — in `dmtp-branch` trailers; a
 * handler that fails reports its onward calls' branches in `dmtp-branch-failed` instead (see `addFailedBranch`).
 * Onward calls the handler started and did not await are waited for before the answer (their branches belong in
 * it), and an onward call started after the handler returned is refused, as an initiator's are once commit begins;
 * so is a look-up of the branch (`currentBranch()`, `currentPg()`) from work the call left behind.
 * A call without context, and the ParticipantService's own calls, pass through untouched.
 */
import { trace } from '@opentelemetry/api';
import type { ServerMiddleware } from '../rpc/middleware';
import { CancelledError, MD, SPAN_ATTRIBUTES } from '../common';
import { runInBranch } from './branch-context';
import { runInTx, whenIdle, type TxContext } from './context';
import { BusinessCallAbandonedError } from './errors';
import type { Participant } from './participant';
import { addBranchTrailer, readContext } from './tx-metadata';

const PARTICIPANT_PREFIX = '/dmtp.v1.Participant/';

function gaveUp(reason: unknown, method: string): Error {
  if (reason instanceof Error) return reason;
  return new CancelledError(`the caller of ${method} gave up before its handler finished`);
}

/** A metadata value (printable ASCII), at most 1,000 characters. */
function printable(text: string): string {
  return text.replace(/[^ -~]/g, '?').slice(0, 1_000);
}

export function txServerMiddleware(p: Participant): ServerMiddleware {
  return async (call, next) => {
    // The coordinator's own Prepare/Commit/Rollback carry the xid for tracing; they are not business calls.
    if (call.method.startsWith(PARTICIPANT_PREFIX)) {
      const span = trace.getActiveSpan(); // read first: the metadata of a multiplexed call is built when read
      const xid = span && call.metadata.get(MD.xid)[0];
      if (xid !== undefined) span?.setAttribute(SPAN_ATTRIBUTES.xid, String(xid));
      return next();
    }
    const wire = readContext(call.metadata, p.clock.now(), p.config.contextLimits);
    if (!wire) return next();
    const resource = p.config.resourceFor(call.method);
    // A tracing middleware's span (rpc's tracingServerMiddleware, before this one) names the transaction.
    const span = trace.getActiveSpan();
    if (span !== undefined) {
      span.setAttribute(SPAN_ATTRIBUTES.xid, wire.xid);
      if (resource !== undefined) span.setAttribute(SPAN_ATTRIBUTES.branch, p.branchIdFor(resource));
    }
    // Onward calls carry the branches held up the chain, this call's own included: one that comes back here to
    // the same branch is refused at once (its lock is held by this handler, which waits for it).
    const held = resource === undefined ? wire.held : [...(wire.held ?? []), p.branchIdFor(resource)];
    const ctx: TxContext = { ...wire, held, role: 'participant', branches: [], events: [], active: true };
    // What the answer reports of the onward calls: their branches — as failed ones when the handler failed, since
    // its own work is undone and theirs cannot be — and a rollback-only reason one of them left.
    const report = (failed: boolean) => {
      for (const ref of ctx.branches)
        addBranchTrailer(call.trailers, ref, failed ? MD.failedBranch : MD.branch);
      for (const { ref } of ctx.failedBranches?.values() ?? [])
        addBranchTrailer(call.trailers, ref, MD.failedBranch);
      if (ctx.rollbackOnly !== undefined) call.trailers.set(MD.rollbackOnly, printable(ctx.rollbackOnly));
    };
    // The handler's answer waits for its onward calls; later ones are refused (their branches could not travel).
    const handled = async <T>(run: () => Promise<T>): Promise<T> => {
      let ok = false;
      try {
        const res = await run();
        ok = true;
        return res;
      } finally {
        ctx.active = false;
        await whenIdle(ctx);
        if (!ok) report(true);
      }
    };
    if (resource === undefined) {
      // No branch to report: the caller must still tell this answer from a server that ignored the context (an
      // answer in a branch always reports it).
      call.trailers.set(MD.taken, '1');
      const res = await handled(() => runInTx(ctx, next));
      report(false);
      return res;
    }
    const inBranch = p.withBranch(wire, resource, async (scope, ref) => {
      // The branch is reachable until the call settles (its onward calls included), not from what it leaves behind.
      const res = await runInBranch(scope, () => handled(() => runInTx(ctx, next)));
      // The caller gave up (cancelled, or its deadline passed) while the handler ran: to it this call failed, so
      // its work must not stay in the branch — failing here undoes the call alone, or rolls the branch back.
      if (call.signal.aborted) {
        report(true);
        throw gaveUp(call.signal.reason, call.method);
      }
      addBranchTrailer(call.trailers, ref);
      report(false);
      return res;
    });
    return inBranch.catch((err: unknown) => {
      if (!(err instanceof BusinessCallAbandonedError)) throw err;
      // The handler runs on, and `handled` (which reports its onward calls) waits for it: report them here. Its
      // later onward calls are refused; those still under way cannot be reported, so the caller's transaction is
      // made rollback-only (what they do could otherwise commit without this call's undone work).
      ctx.active = false;
      report(true);
      if ((ctx.calls?.size ?? 0) > 0 && ctx.rollbackOnly === undefined) {
        call.trailers.set(
          MD.rollbackOnly,
          printable(`onward calls of ${call.method} were still under way when it was abandoned`),
        );
      }
      throw err;
    });
  };
}
