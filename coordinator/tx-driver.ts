/**
 * Drives a transaction from its Commit to its end, for the TransactionManager: the prepare round, the commit
 * point (the COMMITTING record, durable before any phase-2 message), the one-phase path, abort (presumed: no
 * record), phase 2 and the outbox relay, and finally the record's removal (a committed one's becomes its committed
 * marker); also an operator's settle of one branch. The manager owns the front door (requests, their checks, lazy
 * begin, deadlines, recovery's choice of what to re-drive); this file owns every step after that. Transport-free
 * like the manager.
 */
import { DmtpError, logger, UnavailableError, type Clock } from '../common';
import { KeyedLock } from '../common/keyed-lock';
import { BranchState, TxState, type BranchRef } from '../proto/gen/dmtp/v1/types';
import type { LifecycleKind, LifecycleSink } from './event-sink';
import type { Failpoints } from './failpoints';
import type { TxLog, TxRecord } from './log/tx-log';
import { LogConflictError } from './errors';
import { untilDurable } from './log/durable';
import type { ManagerLimits } from './options';
import { awaitsPhase2, phase2KindOf, type PhaseTwo } from './phase-two';
import type { Relay } from './relay';
import { isCommit, transition } from './state-machine';
import type { TimerSet } from './timer-set';
import { boundedReason, toRecord, type BranchEntry, type Tx, type TxOutcome } from './tx';
import type { TxTable } from './tx-table';

const log = logger('coordinator:manager');

export interface TxDriverDeps {
  /** The owning coordinator's id (lifecycle notifications). */
  id: string;
  clock: Clock;
  txLog: TxLog;
  limits: ManagerLimits;
  fp: Failpoints;
  timers: TimerSet;
  phase2: PhaseTwo;
  table: TxTable;
  relay?: Relay;
  lifecycle?: LifecycleSink;
  /** True once the manager is stopping: log writes are no longer retried. */
  stopped: () => boolean;
}

export class TxDriver {
  /** Operators' settles, one at a time per transaction. */
  private readonly settling = new KeyedLock();

  constructor(private readonly d: TxDriverDeps) {}

  /** ACTIVE → PREPARING and on: one phase for a lone branch, else the prepare round and the decision. */
  async run(tx: Tx): Promise<TxOutcome> {
    const { clock, limits, txLog, phase2, fp } = this.d;
    if (clock.now() > tx.deadlineAtMs) return this.abort(tx, 'transaction deadline passed before commit');
    tx.state = transition(tx.xid, tx.state, TxState.TX_STATE_PREPARING);
    this.cancelDeadline(tx);
    if (isOnePhase(tx)) return this.onePhase(tx);
    if (limits.logPrepare && tx.branches.length > 0) {
      try {
        await this.durable(tx.xid, () => txLog.create(toRecord(tx, TxState.TX_STATE_PREPARING, refs(tx))));
        tx.logged = true;
      } catch (err) {
        return this.abort(tx, `could not log the prepare: ${(err as Error).message}`);
      }
    }
    const failure = await phase2.prepareAll(tx);
    // An abort asked for during phase 1 (Rollback, an operator's resolve) is the reason; phase 1's failure after it.
    if (failure)
      return this.abort(tx, tx.abortRequested ? `${tx.abortRequested}; phase 1: ${failure}` : failure);
    if (fp.armed('after-prepare-before-decision')) await fp.hit('after-prepare-before-decision');
    if (tx.abortRequested) return this.abort(tx, tx.abortRequested);
    this.notify('prepared', tx);
    return this.decideCommit(tx);
  }

  /** The commit point: the COMMITTING record, durable before phase 2 (skipped when nothing would need it). */
  async decideCommit(tx: Tx): Promise<TxOutcome> {
    const toCommit = tx.branches
      .filter((b) => b.state === BranchState.BRANCH_STATE_PREPARED)
      .map((b) => b.ref);
    tx.decisionWriting = true;
    tx.decidedAtMs = this.d.clock.now();
    if (toCommit.length > 0 || tx.events.length > 0) {
      const rec = toRecord(tx, TxState.TX_STATE_COMMITTING, toCommit);
      const txLog = this.d.txLog;
      const write = this.durable(tx.xid, () => (tx.logged ? txLog.update(rec) : txLog.create(rec)));
      const committing = () => {
        tx.logged = true;
        tx.state = transition(tx.xid, tx.state, TxState.TX_STATE_COMMITTING);
        this.notify('committed', tx);
        this.startPhase2(tx);
        return undefined;
      };
      const landed = write.then(committing, async (err: unknown) => {
        if (!(err instanceof LogConflictError)) throw err;
        // Another writer's record is under the key (an operator's put, a restore, an unfenced twin): what it
        // holds is the durable truth. A commit decision there is this one; anything else means no commit is
        // durable, so the transaction aborts — never left PREPARING with its decision "being written".
        const stored = await this.storedRecord(tx.xid);
        log.error('commit decision refused: the log holds another record', {
          xid: tx.xid,
          stored: stored ? TxState[stored.state] : 'none',
          err,
        });
        if (stored && isCommit(stored.state)) return committing();
        tx.decisionWriting = false;
        return this.abort(tx, `commit decision refused by the log (${err.message}); no commit is durable`);
      });
      landed.catch((err) => log.error('commit decision could not be written', { xid: tx.xid, err }));
      const aborted = await this.withDecisionTimeout(tx, landed);
      if (aborted) return aborted;
    } else {
      tx.state = transition(tx.xid, tx.state, TxState.TX_STATE_COMMITTING);
      this.notify('committed', tx);
      this.startPhase2(tx);
    }
    return { state: TxState.TX_STATE_COMMITTED, abortReason: '' };
  }

  /**
   * An operator's settle of branch `b` of a decided transaction (checked by the manager): first the log's record
   * loses the branch, in one attempt (UNAVAILABLE if the log does not confirm it: asked again, it is written again),
   * then phase 2 counts it acknowledged. False when it had acknowledged meanwhile. Settles of one transaction go one
   * after another, so each record written leaves out every branch settled before it.
   */
  settleBranch(tx: Tx, b: BranchEntry, reason: string): Promise<boolean> {
    return this.settling.run(tx.xid, () => this.settleNow(tx, b, reason));
  }

  private async settleNow(tx: Tx, b: BranchEntry, reason: string): Promise<boolean> {
    const kind = phase2KindOf(tx);
    if (!awaitsPhase2(kind, b)) return false;
    const left = tx.branches.filter((o) => o !== b && awaitsPhase2(kind, o)).map((o) => o.ref);
    // Nothing left to send and no events to deliver: the record's removal follows at once, no write before it.
    const finishesNow =
      left.length === 0 && (kind === 'rollback' || tx.events.length === 0 || tx.eventsDelivered);
    if (tx.logged && !finishesNow) {
      // COMMITTING keeps its state; an abort's record (logPrepare's) stays undecided, which recovery aborts.
      const state = kind === 'commit' ? TxState.TX_STATE_COMMITTING : TxState.TX_STATE_PREPARING;
      try {
        await this.d.txLog.update(toRecord(tx, state, left));
      } catch (err) {
        if (err instanceof DmtpError) throw err; // a conflict (another writer's record), the log unavailable
        throw new UnavailableError(
          `the log did not confirm the settle of branch '${b.ref.branchId}' of ${tx.xid}: ask again`,
          { cause: err, details: { xid: tx.xid, branchId: b.ref.branchId } },
        );
      }
    }
    return this.d.phase2.settle(
      tx,
      b,
      reason ? `settled by an operator: ${reason}` : 'settled by an operator',
    );
  }

  /** The record under the xid now, read until the log answers (or the owner stops). */
  private async storedRecord(xid: string): Promise<TxRecord | undefined> {
    let stored: TxRecord | undefined;
    await this.durable(xid, async () => void (stored = await this.d.txLog.get(xid)));
    return stored;
  }

  private withDecisionTimeout<T>(tx: Tx, landed: Promise<T>): Promise<T> {
    return this.d.timers.within(
      landed,
      this.d.limits.decisionTimeoutMs,
      () =>
        new UnavailableError(
          `transaction ${tx.xid}: the commit decision is not durable yet (log unavailable); outcome pending`,
          { details: { xid: tx.xid } },
        ),
    );
  }

  /**
   * One branch and no events: no prepare round; the branch commits in one phase and its answer is the outcome.
   * With logOnePhase a small record (flagged onePhase) is durable before the Commit is sent, so after a crash
   * recovery asks the branch again instead of presuming abort, and QueryOutcome never contradicts the branch.
   */
  private async onePhase(tx: Tx): Promise<TxOutcome> {
    if (this.d.limits.logOnePhase) {
      try {
        await this.durable(tx.xid, () =>
          this.d.txLog.create(toRecord(tx, TxState.TX_STATE_PREPARING, refs(tx), true)),
        );
        tx.logged = true;
      } catch (err) {
        return this.abort(tx, `could not log the one-phase commit: ${(err as Error).message}`);
      }
      if (tx.abortRequested) return this.abort(tx, tx.abortRequested);
    }
    return this.finishOnePhase(tx);
  }

  /**
   * Sends (recovery, `sentBefore`: sends again) the one-phase Commit; the branch's answer becomes the outcome.
   */
  async finishOnePhase(tx: Tx, sentBefore = false): Promise<TxOutcome> {
    const { fp } = this.d;
    tx.decisionWriting = true; // from here the branch decides: a Rollback waits for its answer
    const r = await this.d.phase2.onePhase(tx, tx.branches[0], sentBefore);
    if (!r.committed) return this.abort(tx, r.reason);
    if (fp.armed('after-one-phase-commit')) await fp.hit('after-one-phase-commit');
    tx.decidedAtMs = this.d.clock.now();
    tx.state = transition(tx.xid, tx.state, TxState.TX_STATE_COMMITTING);
    tx.state = transition(tx.xid, tx.state, TxState.TX_STATE_COMMITTED);
    this.notify('committed', tx);
    this.removeRecord(tx); // its record (if logged) becomes the committed marker
    return { state: TxState.TX_STATE_COMMITTED, abortReason: '' };
  }

  /** Presumed abort: the decision needs no record; roll back every branch that may hold work, then forget. */
  abort(tx: Tx, why: string): TxOutcome {
    const reason = boundedReason(why);
    tx.state = transition(tx.xid, tx.state, TxState.TX_STATE_ABORTING);
    this.cancelDeadline(tx);
    tx.abortReason = reason;
    tx.decidedAtMs = this.d.clock.now();
    this.notify('aborted', tx, reason);
    this.d.phase2.drive(tx, 'rollback', () => {
      tx.state = transition(tx.xid, tx.state, TxState.TX_STATE_ABORTED);
      this.removeRecord(tx);
    });
    return { state: TxState.TX_STATE_ABORTED, abortReason: reason };
  }

  /** Phase 2 of a decided commit, and the relay of its staged events; the record goes when both are done. */
  startPhase2(tx: Tx): void {
    const { fp, relay } = this.d;
    let branchesDone = false;
    let eventsDone = tx.events.length === 0;
    const maybeFinish = () => {
      if (!branchesDone || !eventsDone) return;
      tx.state = transition(tx.xid, tx.state, TxState.TX_STATE_COMMITTED);
      this.removeRecord(tx);
    };
    this.d.phase2.drive(tx, 'commit', () => ((branchesDone = true), maybeFinish()));
    // No sink here (an HA taker without Kafka): the events wait in the record for a coordinator that has one.
    if (!eventsDone && !relay) tx.eventsWaitForSink = true;
    if (!eventsDone && relay) {
      void (async () => {
        if (fp.armed('after-decision-before-relay')) await fp.hit('after-decision-before-relay');
        const delivered = relay.deliver(tx.xid, tx.events);
        tx.eventsProgress = relay.progress(tx.xid);
        await delivered;
        tx.eventsDelivered = eventsDone = true;
        maybeFinish();
      })();
    }
  }

  /**
   * Forgets a finished transaction once its record (if any) is gone; retried while the log fails. A committed
   * one's record is replaced by its committed marker (kept outcomeRetentionSeconds) in the same write.
   */
  private removeRecord(tx: Tx): void {
    if (!tx.logged) return this.forget(tx);
    const txLog = this.d.txLog;
    const committed = tx.state === TxState.TX_STATE_COMMITTED;
    const write = () => (committed ? txLog.finishCommitted(tx.xid, tx.decidedAtMs) : txLog.remove(tx.xid));
    this.durable(tx.xid, write).then(
      () => ((tx.logged = false), this.forget(tx)),
      (err) => log.warn('record removal abandoned', { xid: tx.xid, err }),
    );
  }

  private forget(tx: Tx): void {
    this.cancelDeadline(tx);
    this.d.table.forget(tx);
  }

  cancelDeadline(tx: Tx): void {
    tx.deadlineTimer?.cancel();
    tx.deadlineTimer = undefined;
  }

  /** Retries a log write with backoff until it lands; a conflict (another writer, lost fence) is final. */
  durable(xid: string, write: () => Promise<void>): Promise<void> {
    return untilDurable(xid, write, this.d.timers, this.d.limits.logBackoff, this.d.stopped);
  }

  /** Tells the lifecycle sink (Kafka lifecycle topic, metrics); a throwing sink is logged, never fatal. */
  notify(kind: LifecycleKind, tx: Tx, reason?: string): void {
    const { lifecycle, clock } = this.d;
    if (!lifecycle) return;
    const now = clock.now();
    try {
      lifecycle.notify({
        kind,
        xid: tx.xid,
        owner: this.d.id,
        atMs: now,
        elapsedMs: now - tx.createdAtMs,
        branches: tx.branches.length,
        reason,
      });
    } catch (err) {
      log.warn('lifecycle sink threw', { xid: tx.xid, err: err as Error });
    }
  }
}

/** One branch and no staged events: committed in one phase. */
export function isOnePhase(tx: Tx): boolean {
  return tx.branches.length === 1 && tx.events.length === 0;
}

/** What callers are told: the decision, not the progress of phase 2. */
export function reportedState(tx: Tx): TxState {
  if (isCommit(tx.state)) return TxState.TX_STATE_COMMITTED;
  if (tx.state === TxState.TX_STATE_ABORTING) return TxState.TX_STATE_ABORTED;
  return tx.state;
}

function refs(tx: Tx): BranchRef[] {
  return tx.branches.map((b) => b.ref);
}
