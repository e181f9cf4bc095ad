/**
 * The participant rounds of the protocol: phase 1 (prepare every branch in parallel within the prepare
 * timeout), the one-phase commit, and phase 2 (commit or roll back every branch that needs it, retried with
 * backoff until each acknowledges). Branch states are updated in place on the transaction.
 */
import {
  backoffMs,
  DataLossError,
  DeadlineExceededError,
  DmtpError,
  FailedPreconditionError,
  InvalidArgumentError,
  logger,
  NotFoundError,
  type Clock,
} from '../common';
import { BranchState, Vote, type BranchRef } from '../proto/gen/dmtp/v1/types';
import type { Failpoints } from './failpoints';
import type { CommitResult, ParticipantGateway } from './gateway';
import type { ManagerLimits } from './options';
import { isCommit } from './state-machine';
import type { TimerSet } from './timer-set';
import { boundedReason, type BranchEntry, type Tx } from './tx';

const log = logger('coordinator:phase-two');

export type Phase2Kind = 'commit' | 'rollback';

/**
 * Statuses by which a participant (or its server) refused a call without carrying it out: the typed errors of
 * INVALID_ARGUMENT, NOT_FOUND and FAILED_PRECONDITION, and ALREADY_EXISTS (6), PERMISSION_DENIED (7),
 * OUT_OF_RANGE (11), UNIMPLEMENTED (12), UNAUTHENTICATED (16).
 */
const REFUSED_CODES = new Set([6, 7, 11, 12, 16]);
function notCarriedOut(err: unknown): boolean {
  return (
    err instanceof InvalidArgumentError ||
    err instanceof NotFoundError ||
    err instanceof FailedPreconditionError ||
    (err instanceof DmtpError && REFUSED_CODES.has(err.code))
  );
}

/** INVALID_ARGUMENT or UNIMPLEMENTED (12): the participant cannot hold the branch the call names. */
function unreachableBranch(err: unknown): boolean {
  return err instanceof InvalidArgumentError || (err instanceof DmtpError && err.code === 12);
}

/** Unanswered one-phase Commits after which an operator may decide (half a minute or more, default backoff). */
export const ONE_PHASE_RESOLVABLE_AFTER = 12;

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class PhaseTwo {
  private stopped = false;

  constructor(
    private readonly gateway: ParticipantGateway,
    private readonly clock: Clock,
    private readonly timers: TimerSet,
    private readonly limits: ManagerLimits,
    private readonly fp: Failpoints,
  ) {}

  stop(): void {
    this.stopped = true;
  }

  /**
   * Phase 1. Resolves undefined when every branch voted PREPARED or READ_ONLY, or the abort reason at the first
   * ABORT vote, error, or when the prepare timeout passes (late votes still update the branch).
   */
  prepareAll(tx: Tx): Promise<string | undefined> {
    const ms = this.limits.prepareTimeoutMs;
    return new Promise((resolve) => {
      let left = tx.branches.length;
      let done = false;
      const finish = (r: string | undefined) => {
        if (done) return;
        done = true;
        timer.cancel();
        resolve(r);
      };
      const timer = this.timers.after(ms, () =>
        finish(`prepare timed out after ${ms} ms (${left} of ${tx.branches.length} branches did not vote)`),
      );
      if (left === 0) return finish(undefined);
      for (const b of tx.branches) {
        this.gateway.prepare(b.ref, tx.xid, ms).then(
          (r) => {
            b.vote = r.vote;
            b.reason = boundedReason(r.reason);
            if (r.vote === Vote.VOTE_PREPARED) b.state = BranchState.BRANCH_STATE_PREPARED;
            else if (r.vote === Vote.VOTE_READ_ONLY) b.state = BranchState.BRANCH_STATE_READ_ONLY;
            else {
              b.state = BranchState.BRANCH_STATE_ABORT_VOTED;
              return finish(`branch ${b.ref.branchId} voted abort: ${r.reason || 'no reason given'}`);
            }
            if (--left === 0) finish(undefined);
          },
          (err) => {
            b.lastError = message(err);
            // The call carries the same deadline as the timer above; whichever fires first, it is a timeout.
            if (err instanceof DeadlineExceededError)
              return finish(`prepare timed out after ${ms} ms (branch ${b.ref.branchId} did not vote)`);
            finish(`branch ${b.ref.branchId} failed to prepare: ${b.lastError}`);
          },
        );
      }
    });
  }

  /**
   * One-phase commit of a lone branch: the participant's answer decides. Once a one-phase Commit may have
   * reached the branch, only its answer can tell what happened, so it is asked again with phase-2 backoff until
   * it answers (a repeated one-phase Commit is idempotent). A refusal (INVALID_ARGUMENT, FAILED_PRECONDITION,
   * UNIMPLEMENTED, …) proves only that this attempt did nothing: it ends the transaction as not committed while
   * no earlier attempt may have reached the branch, and otherwise (an earlier one went unanswered, or this is
   * recovery: an earlier process sent it) it is asked again, an operator's resolve allowed at once — a stranger
   * now at the instance's old address refuses what the branch itself may have committed. Never resolves once
   * stopped (recovery asks again).
   */
  onePhase(tx: Tx, b: BranchEntry, sentBefore = false): Promise<CommitResult> {
    return new Promise((resolve) => {
      let settled = false;
      let mayHaveRun = sentBefore;
      const settle = (committed: boolean, reason: string, result: CommitResult) => {
        if (settled) return;
        settled = true;
        tx.decideOnePhase = undefined;
        b.state = committed ? BranchState.BRANCH_STATE_COMMITTED : BranchState.BRANCH_STATE_ABORT_VOTED;
        b.reason = boundedReason(reason);
        b.nextRetryAtMs = 0;
        resolve(result);
      };
      const attempt = () => {
        if (this.stopped || settled) return;
        b.attempts++;
        this.gateway.commit(b.ref, tx.xid, true, this.limits.phase2CallTimeoutMs).then(
          (r) => {
            b.lastError = '';
            settle(
              r.committed,
              r.reason,
              r.committed ? r : { committed: false, reason: `branch ${b.ref.branchId}: ${r.reason}` },
            );
          },
          (err) => {
            if (settled) return;
            b.lastError = message(err);
            const refused = notCarriedOut(err);
            if (refused && !mayHaveRun) {
              return settle(false, b.lastError, {
                committed: false,
                reason: `one-phase commit refused: ${b.lastError}`,
              });
            }
            if (!refused && (err as { details?: { notSent?: unknown } })?.details?.notSent !== true)
              mayHaveRun = true;
            // It may have committed: ask on. Once the branch said it can no longer tell (DATA_LOSS: its record
            // purged), a refusal came after an attempt that may have committed, or it has gone unanswered many
            // times (its instance gone, or nowhere to be found), an operator's decision (resolve) may end the
            // asking instead: the only way out when the instance is gone for good. Not sooner: a branch that may
            // still answer is not overridden on a glitch.
            if (err instanceof DataLossError || refused || b.attempts >= ONE_PHASE_RESOLVABLE_AFTER) {
              tx.decideOnePhase ??= (committed, reason) => settle(committed, reason, { committed, reason });
            }
            const delay = backoffMs(b.attempts, this.limits.phase2Backoff);
            b.nextRetryAtMs = this.clock.now() + delay;
            log.debug('one-phase commit unanswered; asking again', {
              xid: tx.xid,
              branch: b.ref.branchId,
              delay,
              err: b.lastError,
            });
            this.timers.after(delay, attempt);
          },
        );
      };
      attempt();
    });
  }

  /**
   * Phase 2: sends the decision to every branch that needs it; calls `done` once all acknowledged (or were
   * settled by an operator, `settle`).
   */
  drive(tx: Tx, kind: Phase2Kind, done: () => void): void {
    const need = tx.branches.filter((b) => awaitsPhase2(kind, b));
    tx.phase2Pending = need.length;
    if (need.length === 0) return done();
    tx.phase2Done = done;
    const go = async () => {
      if (kind === 'commit' && this.fp.armed('after-decision-before-phase2')) {
        await this.fp.hit('after-decision-before-phase2');
      }
      for (const b of need) this.send(tx, b, kind);
    };
    void go();
  }

  /**
   * An operator's word that branch `b` did by hand what the decision says: counted as acknowledged, its reason
   * kept, and nothing more is sent to it (a call in flight or a retry timer finds it no longer waiting). False
   * when it was not waiting (already acknowledged, or not one phase 2 sends to).
   */
  settle(tx: Tx, b: BranchEntry, reason: string): boolean {
    const kind = phase2KindOf(tx);
    if (!awaitsPhase2(kind, b) || tx.phase2Pending <= 0) return false;
    b.reason = boundedReason(reason);
    b.settled = true;
    this.acknowledge(tx, b, kind);
    return true;
  }

  /**
   * Branches a Rollback names for a transaction already aborted (calls that were still in flight at the
   * initiator's first Rollback reported them afterwards): told once, best effort. One that misses it rolls back
   * at its deadline, or asks and is told ABORT (presumed abort); nothing waits on these.
   */
  rollbackLate(xid: string, refs: BranchRef[], reason: string): void {
    for (const ref of refs) {
      this.gateway
        .rollback(ref, xid, reason, this.limits.phase2CallTimeoutMs)
        .catch((err) =>
          log.debug('late rollback not delivered', { xid, branch: ref.branchId, err: message(err) }),
        );
    }
  }

  private send(tx: Tx, b: BranchEntry, kind: Phase2Kind): void {
    // Settled by an operator while this retry waited: nothing more to send.
    if (this.stopped || !awaitsPhase2(kind, b)) return;
    b.attempts++;
    const ms = this.limits.phase2CallTimeoutMs;
    const call =
      kind === 'commit'
        ? this.gateway.commit(b.ref, tx.xid, false, ms).then((r) => {
            if (!r.committed)
              log.warn('participant answered committed=false in phase 2', { xid: tx.xid, ...b.ref });
          })
        : this.gateway.rollback(b.ref, tx.xid, tx.abortReason, ms);
    const acked = async () => {
      // Settled by an operator while the call was on its way: counted then, not twice.
      if (!awaitsPhase2(kind, b)) return;
      const left = this.acknowledge(tx, b, kind, false);
      if (left > 0 && kind === 'commit' && this.fp.armed('mid-phase2')) await this.fp.hit('mid-phase2');
      if (left === 0) this.endPhase2(tx);
    };
    call.then(acked, (err) => {
      if (this.stopped || !awaitsPhase2(kind, b)) return;
      // A prepared branch the participant no longer knows was finished and purged long ago: it can only have
      // been committed (our decision is commit), e.g. by a coordinator that took over before this retry. (The
      // gateway passes a Commit's NOT_FOUND on only when the registry does not say the instance is elsewhere.)
      if (kind === 'commit' && err instanceof NotFoundError) {
        log.info('phase-2 commit: the participant no longer knows the branch; counted as acknowledged', {
          xid: tx.xid,
          branch: b.ref.branchId,
        });
        return void acked();
      }
      // A rollback the participant cannot even take (a reference it refuses, a server that is no participant) or
      // of a branch it does not have (NOT_FOUND: an SDK participant's answer for another instance's branch, after
      // the gateway found that instance nowhere else) proves it holds no such branch: asking again would never
      // change that. Presumed abort covers the rest: a prepared branch elsewhere asks, and is told ABORT.
      if (kind === 'rollback' && (unreachableBranch(err) || err instanceof NotFoundError)) {
        log.warn('phase-2 rollback refused as impossible; counted as acknowledged', {
          xid: tx.xid,
          branch: b.ref.branchId,
          err: message(err),
        });
        return void acked();
      }
      b.lastError = message(err);
      const bound = this.limits.rollbackRetryMs;
      if (kind === 'rollback' && bound > 0 && this.clock.now() - tx.decidedAtMs >= bound) {
        log.warn('phase-2 rollback unacknowledged for rollbackRetryMs; left to presumed abort', {
          xid: tx.xid,
          branch: b.ref.branchId,
          address: b.ref.address,
          attempts: b.attempts,
          err: b.lastError,
        });
        return void acked();
      }
      const delay = backoffMs(b.attempts, this.limits.phase2Backoff);
      b.nextRetryAtMs = this.clock.now() + delay;
      log.debug(`phase-2 ${kind} failed; retrying`, {
        xid: tx.xid,
        branch: b.ref.branchId,
        delay,
        err: b.lastError,
      });
      this.timers.after(delay, () => this.send(tx, b, kind));
    });
  }

  /** Marks `b` acknowledged; returns how many are still waiting (and, with `finish`, ends phase 2 at 0). */
  private acknowledge(tx: Tx, b: BranchEntry, kind: Phase2Kind, finish = true): number {
    b.state = kind === 'commit' ? BranchState.BRANCH_STATE_COMMITTED : BranchState.BRANCH_STATE_ROLLED_BACK;
    b.nextRetryAtMs = 0;
    b.lastError = '';
    const left = --tx.phase2Pending;
    if (finish && left === 0) this.endPhase2(tx);
    return left;
  }

  private endPhase2(tx: Tx): void {
    const done = tx.phase2Done;
    tx.phase2Done = undefined;
    done?.();
  }
}

/** The phase 2 a decided transaction runs: commit once the decision is commit, rollback otherwise. */
export function phase2KindOf(tx: Tx): Phase2Kind {
  return isCommit(tx.state) ? 'commit' : 'rollback';
}

/** Whether phase 2 of `kind` still has to reach branch `b` (the branches `drive` sends to, until each acks). */
export function awaitsPhase2(kind: Phase2Kind, b: BranchEntry): boolean {
  if (kind === 'commit') return b.state === BranchState.BRANCH_STATE_PREPARED;
  return (
    b.state !== BranchState.BRANCH_STATE_READ_ONLY &&
    b.state !== BranchState.BRANCH_STATE_ROLLED_BACK &&
    b.state !== BranchState.BRANCH_STATE_COMMITTED
  );
}
