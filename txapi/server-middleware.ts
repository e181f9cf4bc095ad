/**
 * The participant's server middleware: a call that carries a transaction context (validated: malformed or
 * forged context is INVALID_ARGUMENT, an expired transaction FAILED_PRECONDITION) enlists the branch of the
 * method's resource, runs the handler inside it (`currentBranch()`, and `currentTx()` so onward calls carry the
 * transaction), and reports the branch — with any branches of onward calls — in `dmtp-branch` trailers.
 * A call without context, and the ParticipantService's own calls, pass through untouched.
 */
import type { ServerMiddleware } from '../rpc/middleware';
import { runInBranch } from './branch-context';
import { runInTx, type TxContext } from './context';
import type { Participant } from './participant';
import { addBranchTrailer, readContext } from './tx-metadata';

const PARTICIPANT_PREFIX = '/dmtp.v1.Participant/';

export function txServerMiddleware(p: Participant): ServerMiddleware {
  return async (call, next) => {
    // The coordinator's own Prepare/Commit/Rollback carry the xid for tracing; they are not business calls.
    if (call.method.startsWith(PARTICIPANT_PREFIX)) return next();
    const wire = readContext(call.metadata, p.clock.now(), p.config.contextLimits);
    if (!wire) return next();
    const ctx: TxContext = { ...wire, role: 'participant', branches: [], events: [], active: true };
    const resource = p.config.resourceFor(call.method);
    const forward = () => {
      for (const ref of ctx.branches) addBranchTrailer(call.trailers, ref);
    };
    if (resource === undefined) {
      const res = await runInTx(ctx, next);
      forward();
      return res;
    }
    return p.withBranch(wire, resource, async (scope, ref) => {
      const res = await runInTx(ctx, () => runInBranch(scope, next));
      addBranchTrailer(call.trailers, ref);
      forward();
      return res;
    });
  };
}
