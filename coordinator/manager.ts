/**
 * The transaction manager: the 2PC protocol of DESIGN.md, transport-free. It talks to participants through a
 * ParticipantGateway, to the durable log through a TxLog and to Kafka through an EventSink, and reads time only
 * from its Clock, so unit tests run it with a ManualClock, a memory log and a fake gateway.
 *
 * This file is the front door: the requests (begin, enlist, commit, rollback, resolve, settle, the queries), every
 * check a request must pass before anything changes, lazy begin and deadlines, and recovery's choice of what to
 * re-drive at start. What happens to a transaction after its Commit is in tx-driver.ts.
 *
 * Protocol decisions (docs/architecture.md, "Transactions on the wire"): lazy begin with client-minted xids;
 * branches arrive with Commit; presumed abort (no abort record; an unknown xid is aborted); one branch and no
 * events ⇒ one-phase commit (its small onePhase record first, with logOnePhase); the COMMITTING record
 * (branches + staged events) is the commit point and is durable before any phase-2 message; phase 2 runs in the
 * background, retried until acknowledged.
 */
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
  logger,
  parseXid,
  mintXid,
  systemClock,
  type Clock,
} from '../common';
import { BranchState, Outcome, TxState, type BranchRef, type Transaction } from '../proto/gen/dmtp/v1/types';
import { Failpoints } from './failpoints';
import type { TxLog } from './log/tx-log';
import { compileOptions, type ManagerLimits } from './options';
import { PhaseTwo } from './phase-two';
import { Relay, type RelayStats } from './relay';
import { isCommit, isDecided } from './state-machine';
import { DeadlineQueue } from '../common/deadline-queue';
import { TimerSet } from './timer-set';
import type { BeginOptions, CommitOptions, ManagerDeps, RollbackOptions } from './manager-types';
import { fromRecord, newBranch, newTx, type Tx, type TxOutcome } from './tx';
import { isOnePhase, reportedState, TxDriver } from './tx-driver';
import { TxTable, XID_CLOCK_SKEW_MS, type ListQuery } from './tx-table';
import { OutcomeRecall } from './outcome-recall';
import {
  checkBranch,
  checkBranchList,
  checkBranchCount,
  checkEvents,
  checkLabels,
  checkTimeout,
} from './validate';

export type { BeginOptions, CommitOptions, ManagerDeps, RollbackOptions } from './manager-types';
export type { ListQuery } from './tx-table';

const log = logger('coordinator:manager');

/** Records recovered in one event-loop turn before start() lets the I/O that waited run. */
export const RECOVER_PER_TURN = 256;

export class TransactionManager {
  readonly id: string;
  readonly limits: ManagerLimits;
  private readonly clock: Clock;
  private readonly txLog: TxLog;
  private readonly timers: TimerSet;
  /** ACTIVE transactions' deadlines: one timer for all of them. */
  private readonly deadlines: DeadlineQueue<Tx>;
  private readonly relay?: Relay;
  private readonly phase2: PhaseTwo;
  private readonly table: TxTable;
  /** Operators' actions taken here (`operatorActions`). */
  private readonly actions = { resolve: 0, settle: 0 };
  private readonly driver: TxDriver;
  private stopped = false;
  private readonly recall: OutcomeRecall;
  /** HA: another coordinator's transactions, taken over (see ManagerDeps.takenOver). */
  readonly takenOver: boolean;

  constructor(deps: ManagerDeps) {
    parseXid(`${deps.id}:0:0`); // validates the id as an xid owner
    this.id = deps.id;
    this.limits = compileOptions(deps.options);
    this.clock = deps.clock ?? systemClock;
    this.txLog = deps.log;
    const fp = deps.failpoints ?? new Failpoints();
    this.takenOver = deps.takenOver ?? false;
    this.timers = new TimerSet(this.clock);
    this.deadlines = new DeadlineQueue<Tx>(this.clock, this.timers, (tx) => {
      tx.deadlineTimer = undefined;
      if (tx.state === TxState.TX_STATE_ACTIVE)
        this.driver.abort(tx, `transaction timed out after ${tx.deadlineAtMs - tx.createdAtMs} ms`);
    });
    this.table = new TxTable(this.id, this.limits, this.clock);
    this.recall = new OutcomeRecall(this.table, this.txLog, this.clock, this.takenOver);
    if (deps.eventSink) this.relay = new Relay(deps.eventSink, this.clock, this.limits.relayBackoff);
    this.phase2 = new PhaseTwo(deps.gateway, this.clock, this.timers, this.limits, fp);
    this.driver = new TxDriver({
      id: this.id,
      clock: this.clock,
      txLog: deps.log,
      limits: this.limits,
      fp,
      timers: this.timers,
      phase2: this.phase2,
      table: this.table,
      relay: this.relay,
      lifecycle: deps.lifecycle,
      stopped: () => this.stopped,
    });
  }

  // ---- lifecycle -------------------------------------------------------------------------------------------

  /** Recovery: reads this coordinator's records; COMMITTING ⇒ re-drive phase 2 and events, undecided ⇒ abort. */
  async start(): Promise<{ recovered: number; committing: number; onePhase: number; aborted: number }> {
    const records = await this.txLog.load(this.id);
    const withEvents = records.filter((r) => isCommit(r.state) && r.events.length > 0).length;
    if (withEvents > 0 && !this.relay) {
      // Their events can only be published by a coordinator with a sink; without one they would stay COMMITTING.
      const text =
        `coordinator ${this.id}: ${withEvents} committed transaction(s) in the log of '${this.id}' still hold ` +
        'staged events to publish, and this coordinator has no event sink';
      if (!this.takenOver)
        throw new FailedPreconditionError(`${text}: start it with one (KAFKA_BROKERS, or eventSink)`, {
          details: { owner: this.id, transactions: withEvents },
        });
      log.error(`${text}: their branches finish, their events wait in their records`, { owner: this.id });
    }
    let committing = 0;
    let onePhase = 0;
    for (let i = 0; i < records.length; i++) {
      // A taken-over owner's log is recovered in a coordinator that serves its own calls meanwhile: 10,000 records
      // in one turn held its event loop for 200-250 ms. A stop in between (the owner's fence lost) ends the
      // recovery: what is left stays in the log for whoever owns it next.
      if (i > 0 && i % RECOVER_PER_TURN === 0) await new Promise<void>((resolve) => setImmediate(resolve));
      if (this.stopped) {
        throw new UnavailableError(
          `coordinator ${this.id} was stopped while recovering: ${records.length - i} of ` +
            `${records.length} records were left in the log`,
          { details: { owner: this.id, left: records.length - i, records: records.length } },
        );
      }
      const r = records[i];
      if (this.table.find(r.xid)) continue;
      const tx = fromRecord(r);
      this.table.add(tx);
      if (r.onePhase && !isCommit(r.state) && tx.branches.length === 1) {
        // Its only branch decides: ask it again (a repeated one-phase Commit is idempotent).
        onePhase++;
        tx.state = TxState.TX_STATE_PREPARING;
        tx.outcome = this.driver.finishOnePhase(tx, true); // an earlier process may have sent it
      } else if (isCommit(r.state)) {
        committing++;
        tx.state = TxState.TX_STATE_COMMITTING;
        this.driver.startPhase2(tx);
      } else {
        tx.state = TxState.TX_STATE_PREPARING;
        this.driver.abort(tx, r.abortReason || 'undecided at coordinator restart (presumed abort)');
      }
    }
    if (records.length) log.info('recovered transactions', { total: records.length, committing, onePhase });
    return {
      recovered: records.length,
      committing,
      onePhase,
      aborted: records.length - committing - onePhase,
    };
  }

  /** Cancels every timer and retry; records stay in the log for the next start. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.timers.cancelAll();
    this.relay?.stop();
    this.phase2.stop();
    for (const tx of this.table.values()) tx.deadlineTimer = undefined;
  }

  // ---- begin / enlist --------------------------------------------------------------------------------------

  /**
   * Begins a transaction (or answers again for an ACTIVE one named by `o.xid`). An xid that finished before this
   * manager started has its committed marker read first: it is refused, never begun a second time.
   */
  async begin(o: BeginOptions = {}): Promise<{ xid: string; deadlineAtMs: number; coordinatorId: string }> {
    const xid = o.xid ? this.checkOwnXid(o.xid) : mintXid(this.id, this.clock.now());
    const timeoutMs = checkTimeout(o.timeoutMs, this.limits);
    checkLabels(o.initiator, o.labels, this.limits);
    const done = o.xid ? await this.recall.ofRequest(xid) : undefined;
    if (done) {
      throw new FailedPreconditionError(`transaction ${xid} is already finished (${TxState[done.state]})`, {
        details: { xid, state: TxState[done.state] },
      });
    }
    const known = this.table.find(xid);
    if (known) {
      if (known.state !== TxState.TX_STATE_ACTIVE) this.refuse(known, 'begin');
      return { xid, deadlineAtMs: known.deadlineAtMs, coordinatorId: this.id };
    }
    this.refuseNewIfTakenOver(xid);
    const tx = this.create(xid, timeoutMs, o.initiator, o.labels);
    return { xid, deadlineAtMs: tx.deadlineAtMs, coordinatorId: this.id };
  }

  /**
   * Adds a branch to an ACTIVE transaction (begun lazily when the xid is new); FAILED_PRECONDITION otherwise,
   * also for an xid that finished before this manager started (its committed marker is read). Enlisting a
   * branch again is a no-op.
   */
  async enlist(xid: string, ref: BranchRef): Promise<TxState> {
    this.checkOwnXid(xid);
    const branch = checkBranch(ref, 'branch');
    const done = await this.recall.ofRequest(xid);
    if (done) {
      throw new FailedPreconditionError(`cannot enlist in transaction ${xid}: it is ${TxState[done.state]}`, {
        details: { xid, state: TxState[done.state] },
      });
    }
    const known = this.table.find(xid);
    if (known && known.state !== TxState.TX_STATE_ACTIVE) this.refuse(known, 'enlist in');
    if (known?.branches.some((b) => b.ref.branchId === branch.branchId)) return known.state;
    if (known) checkBranchCount(xid, known.branches.length + 1, this.limits);
    if (!known) this.refuseNewIfTakenOver(xid);
    const tx = known ?? this.lazyBegin(xid, {});
    this.addBranches(tx, [branch]);
    return tx.state;
  }

  // ---- commit / rollback -----------------------------------------------------------------------------------

  /** Runs 2PC (or 1PC); resolves once the decision is durable (COMMITTED) or taken (ABORTED). */
  async commit(xid: string, o: CommitOptions = {}): Promise<TxOutcome> {
    this.checkOwnXid(xid);
    const branches = checkBranchList(o.branches, 'branches');
    const events = o.events ?? [];
    const done = await this.recall.ofRequest(xid, o.firstAttempt);
    if (done) {
      // Aborted before this Commit arrived (its outcome presumed when asked for): its branches learn it now.
      if (!isCommit(done.state) && branches.length > 0)
        this.phase2.rollbackLate(xid, branches, done.abortReason || 'aborted');
      return { state: done.state, abortReason: done.abortReason };
    }
    const known = this.table.find(xid);
    if (known?.outcome && !isDecided(known.state)) return this.reply(known);
    if (known && known.state !== TxState.TX_STATE_ACTIVE) {
      return { state: reportedState(known), abortReason: known.abortReason };
    }
    // Every check before anything changes: a refused request leaves no trace.
    const fresh = branches.filter((r) => !known?.branches.some((b) => b.ref.branchId === r.branchId));
    checkBranchCount(xid, (known?.branches.length ?? 0) + fresh.length, this.limits);
    checkEvents(xid, events, known?.events ?? [], this.limits);
    if (events.length && !this.relay) {
      throw new FailedPreconditionError(
        `coordinator ${this.id} has no event sink: it cannot commit staged events`,
      );
    }
    const late = known ? undefined : this.tooLateToBegin(xid, o);
    if (late !== undefined) {
      this.table.presumeAborted(xid, late);
      if (branches.length > 0) this.phase2.rollbackLate(xid, branches, late);
      return { state: TxState.TX_STATE_ABORTED, abortReason: late };
    }
    // Begun by this Commit: it leaves ACTIVE in this same turn, so no deadline timer is armed for it.
    const tx = known ?? this.lazyBegin(xid, o, false);
    this.addBranches(tx, fresh);
    if (!known && this.takenOver) {
      // Its owner failed before this Commit reached anyone: nothing was decided, so it aborts (presumed abort).
      tx.outcome = Promise.resolve(
        this.driver.abort(tx, `coordinator '${this.id}' failed before the commit`),
      );
      return tx.outcome;
    }
    for (const e of events) tx.events.push({ ...e, headers: e.headers ?? {}, sequence: tx.events.length });
    tx.outcome = this.driver.run(tx);
    return this.reply(tx);
  }

  /**
   * Why a Commit for an xid this manager does not know must not begin it (presumed abort), if so:
   * - its deadline, counted from its mint time, passed (beyond clock skew): its participants roll unprepared
   *   branches back then, and a presumed abort answered for it is held only that long;
   * - it is a retry (not `firstAttempt`) of an xid minted before this manager started, with no record and no
   *   committed marker: the previous process may have answered it aborted (a QueryOutcome, a Rollback) and that
   *   answer died with its memory — as a taken-over owner's transactions, it aborts.
   */
  private tooLateToBegin(xid: string, o: CommitOptions): string | undefined {
    if (!this.table.mayStillCommit(xid, checkTimeout(o.timeoutMs, this.limits))) {
      return `transaction ${xid}: its deadline passed before its Commit reached coordinator '${this.id}'`;
    }
    if (!o.firstAttempt && this.recall.mintedBeforeStart(xid)) {
      return (
        `transaction ${xid} began before coordinator '${this.id}' started and is not in its log: a retried ` +
        'Commit of it is aborted (presumed abort: the previous process may have answered it aborted)'
      );
    }
    return undefined;
  }

  /**
   * What a Commit/Rollback caller waits for: the outcome. A two-phase outcome comes with its decision (bounded by
   * decisionTimeoutMs in decideCommit); a one-phase one is the branch's answer, waited for up to
   * prepareTimeoutMs, after which the call answers UNAVAILABLE (outcome pending) while the branch is asked again.
   */
  private reply(tx: Tx): Promise<TxOutcome> {
    if (!tx.outcome || !isOnePhase(tx)) return tx.outcome!;
    return this.timers.within(
      tx.outcome,
      this.limits.prepareTimeoutMs,
      () =>
        new UnavailableError(
          `transaction ${tx.xid}: its only branch ${tx.branches[0].ref.branchId} has not answered the one-phase commit yet; outcome pending`,
          { details: { xid: tx.xid, branch: tx.branches[0].ref.branchId } },
        ),
    );
  }

  /** Aborts an ACTIVE or PREPARING transaction; idempotent for an aborted or unknown one. */
  async rollback(
    xid: string,
    reason = 'rolled back by the initiator',
    branches: BranchRef[] = [],
    o: RollbackOptions = {},
  ): Promise<TxState> {
    this.checkOwnXid(xid);
    const refs = checkBranchList(branches, 'branches');
    const done = await this.recall.ofRequest(xid, o.firstAttempt);
    if (done) {
      if (!isCommit(done.state) && refs.length > 0) this.phase2.rollbackLate(xid, refs, reason);
      return this.rollbackResult(xid, done.state);
    }
    const tx = this.table.find(xid);
    if (!tx || tx.state === TxState.TX_STATE_ACTIVE) {
      // Every check before anything changes: a refused request leaves no trace (and aborts nothing).
      const fresh = refs.filter((r) => !tx?.branches.some((b) => b.ref.branchId === r.branchId));
      checkBranchCount(xid, (tx?.branches.length ?? 0) + fresh.length, this.limits);
    }
    if (!tx) {
      // Presumed abort — and held to, as a queried outcome is: a Commit that arrives after this answer (an
      // operator's or another client's Rollback of a transaction still running) is refused instead of committing
      // a transaction reported rolled back. The branches named are told once, best effort: none can be prepared
      // (no Commit reached this manager), and each rolls back at its deadline anyway. No live transaction is made
      // for them: one retried for ever against a branch nobody answers for held a maxInFlight slot for good.
      this.table.presumeAborted(xid, `rolled back before its Commit reached the coordinator: ${reason}`);
      if (refs.length > 0) this.phase2.rollbackLate(xid, refs, reason);
      return TxState.TX_STATE_ABORTED;
    }
    if (tx.state === TxState.TX_STATE_ACTIVE) {
      this.addBranches(tx, refs);
      this.driver.abort(tx, reason);
      return TxState.TX_STATE_ABORTED;
    }
    if (tx.state === TxState.TX_STATE_PREPARING && !tx.decisionWriting) tx.abortRequested ??= reason;
    const outcome = tx.outcome && !isDecided(tx.state) ? await this.reply(tx) : { state: reportedState(tx) };
    if (!isCommit(outcome.state)) {
      const known = tx.branches;
      const late = refs.filter(
        (r) => !known.some((b) => b.ref.branchId === r.branchId && b.ref.instanceId === r.instanceId),
      );
      if (late.length > 0) this.phase2.rollbackLate(xid, late, reason);
    }
    return this.rollbackResult(xid, outcome.state);
  }

  private rollbackResult(xid: string, state: TxState): TxState {
    if (isCommit(state)) throw new FailedPreconditionError(`transaction ${xid} is already committed`);
    return TxState.TX_STATE_ABORTED;
  }

  // ---- operator and participant queries --------------------------------------------------------------------

  /** A transaction in memory, or (finished, forgotten since) a minimal COMMITTED one from its committed marker. */
  async get(xid: string): Promise<Transaction> {
    if (parseXid(xid).owner === this.id) await this.recall.load(xid);
    return this.table.view(xid);
  }

  list(q: ListQuery = {}): { transactions: Transaction[]; nextPageToken: string } {
    return this.table.list(q);
  }

  /**
   * Operator decision for a transaction without a durable decision; FAILED_PRECONDITION once decided. Also for a
   * one-phase transaction whose only branch answered that it can no longer tell (its record purged).
   */
  async resolve(xid: string, outcome: Outcome, reason = 'resolved by an operator'): Promise<TxState> {
    const state = await this.resolveNow(xid, outcome, reason);
    this.actions.resolve++;
    log.warn('transaction resolved by an operator', { xid, outcome: Outcome[outcome], reason });
    return state;
  }

  private async resolveNow(xid: string, outcome: Outcome, reason: string): Promise<TxState> {
    this.checkOwnXid(xid);
    if (outcome !== Outcome.OUTCOME_COMMIT && outcome !== Outcome.OUTCOME_ABORT) {
      throw new InvalidArgumentError('outcome must be OUTCOME_COMMIT or OUTCOME_ABORT');
    }
    const tx = this.table.find(xid);
    if (!tx) {
      if (this.table.finishedOutcome(xid))
        throw new FailedPreconditionError(`transaction ${xid} is already decided`);
      throw new NotFoundError(`transaction ${xid} is not known to coordinator ${this.id}`, {
        details: { xid },
      });
    }
    if (tx.decideOnePhase) {
      // One phase, and its only branch can no longer tell (its record purged): the operator's word decides.
      tx.decideOnePhase(outcome === Outcome.OUTCOME_COMMIT, reason);
      return (await tx.outcome!).state;
    }
    if (isDecided(tx.state) || tx.decisionWriting) {
      const what =
        tx.decisionWriting && !isDecided(tx.state)
          ? 'its decision is being written'
          : 'already has a decision';
      throw new FailedPreconditionError(`transaction ${xid} ${what} (${TxState[tx.state]})`, {
        details: { xid },
      });
    }
    if (outcome === Outcome.OUTCOME_ABORT) {
      if (tx.state === TxState.TX_STATE_ACTIVE || !tx.outcome) {
        this.driver.abort(tx, reason);
        return TxState.TX_STATE_ABORTED;
      }
      // PREPARING, phase 1 under way (a prepare that does not answer, up to prepareTimeoutMs): the abort is
      // taken now — no COMMIT can follow it — and applied when phase 1 ends. Answered ABORTING at once: waiting
      // for phase 1 held the operator's call past its deadline, and the CLI reported an accepted abort as failed.
      tx.abortRequested ??= reason;
      return TxState.TX_STATE_ABORTING;
    }
    if (tx.abortRequested) {
      throw new FailedPreconditionError(
        `transaction ${xid}: an abort is already requested (${tx.abortRequested}); it applies when phase 1 ends`,
        { details: { xid } },
      );
    }
    const unprepared = tx.branches.filter(
      (b) => b.state !== BranchState.BRANCH_STATE_PREPARED && b.state !== BranchState.BRANCH_STATE_READ_ONLY,
    );
    if (tx.state !== TxState.TX_STATE_PREPARING || unprepared.length > 0) {
      const why =
        tx.state !== TxState.TX_STATE_PREPARING
          ? `it is ${TxState[tx.state]}: nothing was prepared`
          : `${unprepared.length} of its branches are not prepared`;
      throw new FailedPreconditionError(
        `transaction ${xid}: COMMIT is only for a PREPARING transaction with every branch prepared; ${why}`,
        { details: { xid } },
      );
    }
    return (await this.driver.decideCommit(tx)).state;
  }

  /**
   * Operator's word that branch `branchId` of a decided transaction (COMMITTING or ABORTING) did by hand what the
   * decision says, its participant gone for good: phase 2 stops sending to it, and the log's record loses it first
   * (durable: a restarted or taking-over coordinator does not send to it either). Never changes an outcome: a
   * participant that comes back still asks and is told the decision. NOT_FOUND for an unknown xid or branch,
   * FAILED_PRECONDITION for an undecided (resolve is for those) or finished transaction; a branch that already
   * acknowledged is left as it is (`settled: false`).
   */
  async settleBranch(
    xid: string,
    branchId: string,
    reason = '',
  ): Promise<{ state: TxState; branchState: BranchState; settled: boolean }> {
    this.checkOwnXid(xid);
    const tx = this.table.find(xid);
    if (!tx) {
      if (this.table.finishedOutcome(xid))
        throw new FailedPreconditionError(`transaction ${xid} is already finished: nothing to settle`, {
          details: { xid },
        });
      throw new NotFoundError(`transaction ${xid} is not known to coordinator ${this.id}`, {
        details: { xid },
      });
    }
    if (tx.state !== TxState.TX_STATE_COMMITTING && tx.state !== TxState.TX_STATE_ABORTING) {
      const hint = isDecided(tx.state) ? 'it is finished' : 'it has no decision yet (tx resolve decides one)';
      throw new FailedPreconditionError(
        `transaction ${xid} is ${TxState[tx.state]}: only a branch of a COMMITTING or ABORTING transaction can be ` +
          `settled; ${hint}`,
        { details: { xid, state: TxState[tx.state] } },
      );
    }
    const b = tx.branches.find((e) => e.ref.branchId === branchId);
    if (!b) {
      throw new NotFoundError(`transaction ${xid} has no branch '${branchId}'`, {
        details: { xid, branchId },
      });
    }
    const settled = await this.driver.settleBranch(tx, b, reason);
    if (settled) {
      this.actions.settle++;
      log.warn('branch settled by an operator', {
        xid,
        branch: branchId,
        decision: isCommit(tx.state) ? 'commit' : 'rollback',
        reason,
      });
    }
    return { state: tx.state, branchState: b.state, settled };
  }

  /**
   * A participant's (or an initiator's) question: from memory; else a retained committed marker ⇒ COMMIT;
   * else ABORT (presumed abort). UNAVAILABLE when the log cannot be read.
   *
   * The presumed ABORT is held to: the xid is remembered as aborted, so a Commit that reaches this manager after
   * the answer (still on its way from its initiator, or sent by a client that has not finished its block while
   * another process asked) is refused as ABORTED instead of committing a transaction already reported aborted.
   */
  async queryOutcome(xid: string): Promise<Outcome> {
    this.checkOwnXid(xid);
    await this.recall.load(xid);
    this.table.presumeAborted(
      xid,
      'presumed aborted: its outcome was asked for before its Commit reached the coordinator',
    );
    return this.table.outcome(xid);
  }

  /** Resolves when the transaction is finished and forgotten (tests, graceful drains). */
  finished(xid: string): Promise<void> {
    return this.table.finished(xid);
  }

  /** Live transactions by state (metrics, tests). */
  counts(): Record<string, number> {
    return this.table.counts();
  }

  /** Operators' decisions taken (`resolve`) and branches settled (`settle`) by this manager so far (metrics). */
  operatorActions(): { resolve: number; settle: number } {
    return { ...this.actions };
  }

  /** The outbox relay's backlog and totals (metrics); undefined without an event sink. */
  relayStats(): RelayStats | undefined {
    return this.relay?.stats;
  }

  get inFlight(): number {
    return this.table.size;
  }

  /**
   * Transactions in flight that this manager can finish itself: all but committed ones whose events wait for an
   * event sink it does not have. A taken-over owner with only those left is handed back to its coordinator.
   */
  get busy(): number {
    let n = 0;
    for (const tx of this.table.values()) if (!tx.eventsWaitForSink) n++;
    return n;
  }

  /**
   * How long this manager has had nothing in flight: since it started, or since its last live transaction
   * finished (0 while one is live). Until that is the outcome retention, participants may still ask about its
   * xids (a prepared branch of an abort, which writes nothing; a lost Commit answer).
   */
  quietForMs(): number {
    return this.table.quietForMs();
  }

  // ---- helpers ---------------------------------------------------------------------------------------------

  private checkOwnXid(xid: string): string {
    if (typeof xid !== 'string' || xid.length === 0) throw new InvalidArgumentError('xid is required');
    const { owner, createdAtMs } = parseXid(xid);
    if (owner !== this.id) {
      throw new FailedPreconditionError(
        `transaction ${xid} is owned by coordinator '${owner}', not '${this.id}'`,
        {
          details: { xid, owner, coordinator: this.id },
        },
      );
    }
    // Minted in the future (beyond clock skew): forged or broken. Remembered, it would also mark every later
    // xid as possibly forgotten, and each request would read the log.
    if (createdAtMs > this.clock.now() + XID_CLOCK_SKEW_MS) {
      throw new InvalidArgumentError(`transaction ${xid} was minted in the future`, { details: { xid } });
    }
    return xid;
  }

  private refuseNewIfTakenOver(xid: string): void {
    if (!this.takenOver) return;
    throw new FailedPreconditionError(
      `transaction ${xid}: coordinator '${this.id}' failed and was taken over; it starts no new transaction`,
      { details: { xid, owner: this.id } },
    );
  }

  private lazyBegin(
    xid: string,
    o: { timeoutMs?: number; initiator?: string; labels?: Record<string, string> },
    armDeadline = true,
  ): Tx {
    const timeoutMs = checkTimeout(o.timeoutMs, this.limits);
    checkLabels(o.initiator, o.labels, this.limits);
    return this.create(xid, timeoutMs, o.initiator, o.labels, armDeadline);
  }

  private create(
    xid: string,
    timeoutMs: number,
    initiator = '',
    labels: Record<string, string> = {},
    armDeadline = true,
  ): Tx {
    if (this.stopped) throw new UnavailableError(`coordinator ${this.id} is stopping`);
    if (this.table.size >= this.limits.maxInFlight) {
      throw new ResourceExhaustedError(
        `coordinator ${this.id} holds ${this.table.size} transactions: the maximum`,
      );
    }
    const now = this.clock.now();
    const tx = newTx(xid, now, now + timeoutMs);
    tx.initiator = initiator;
    tx.labels = { ...labels };
    this.table.add(tx);
    if (armDeadline) {
      tx.deadlineTimer = this.deadlines.add(tx.deadlineAtMs, tx);
    }
    this.driver.notify('begun', tx);
    return tx;
  }

  private addBranches(tx: Tx, refs: BranchRef[]): void {
    const fresh = refs.filter((r) => !tx.branches.some((b) => b.ref.branchId === r.branchId));
    checkBranchCount(tx.xid, tx.branches.length + fresh.length, this.limits);
    for (const r of fresh) tx.branches.push(newBranch(r));
  }

  private refuse(tx: Tx, what: string): never {
    throw new FailedPreconditionError(`cannot ${what} transaction ${tx.xid}: it is ${TxState[tx.state]}`, {
      details: { xid: tx.xid, state: TxState[tx.state] },
    });
  }
}
