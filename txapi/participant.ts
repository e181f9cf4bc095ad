/**
 * The participant SDK's core: a participant instance's life (start, serving, stop, recovery rounds) and its
 * branches' front door: a business call opens its branch (enlist on the first call, the deadline timer) and
 * runs in it; the coordinator's prepare/commit/rollback go to branch-phases.ts. Transport-free: the gRPC shapes
 * are in participant-service.ts and server-middleware.ts, in-doubt recovery in participant-recovery.ts, the
 * volatile work per branch in branch-work.ts.
 *
 * Every step of one branch runs under its lock, and the resource acts before the store records the new state,
 * so the store never claims more than the resource did (a crash in between is repaired by recovery: a
 * `registered` branch after a restart is rolled back, its volatile work being gone).
 *
 * A business handler that never settles would hold its branch's lock for good (the coordinator's Prepare and
 * Rollback, the deadline rollback and stop() all waiting behind it): one still running at its branch's deadline
 * plus `deadlineGraceMs`, or once stop() waited `stopGraceMs`, is abandoned — the call fails, its branch is rolled
 * back as a failed call's is, and the lock is free; the handler runs on, shut out of the branch.
 */
import { randomBytes } from 'node:crypto';
import {
  FailedPreconditionError,
  InvalidArgumentError,
  logger,
  type Clock,
  type Timer,
  UnavailableError,
} from '../common';
import { DeadlineQueue } from '../common/deadline-queue';
import { type BranchKey, type BranchRecord, type BranchStore } from './branch-store';
import { assertNotAbandoned, closeAbandoned, type BranchScope } from './branch-context';
import { BranchPhases } from './branch-phases';
import { BranchWork, type AbandonCause, type PendingBegin, type RunningCall, type Work } from './branch-work';
import {
  BranchDoomedError,
  BusinessCallAbandonedError,
  BranchRolledBackError,
  BranchSealedError,
  ReentrantBranchCallError,
} from './errors';
import { InFlight } from './in-flight';
import { branchPage, checkedQuery, type BranchListPage, type BranchListQuery } from './branch-listing';
import { KeyedLock } from '../common/keyed-lock';
import {
  compileParticipantOptions,
  describeConfig,
  type ParticipantConfig,
  type ParticipantOptions,
} from './participant-options';
import { CoordinatorClients } from './coordinator-client';
import { recoverInDoubt, rollbackExpired, rollbackLostWork } from './participant-recovery';
import type { OnePhaseResult, PrepareVote, Resource } from './resource';
import type { ReportedBranch, WireContext } from './tx-metadata';

export class Participant {
  readonly config: ParticipantConfig;
  readonly log = logger('txapi:participant');
  private readonly resources = new Map<string, Resource>();
  private readonly lock = new KeyedLock();
  private readonly work = new BranchWork();
  /** Every branch's deadline (plus grace) in one queue: thousands due together roll back in batches, not in one turn. */
  private readonly deadlines: DeadlineQueue<BranchKey>;
  private readonly phases: BranchPhases;
  private readonly clients: CoordinatorClients;
  private recoveryTimer: Timer | undefined;
  private recovering: Promise<void> | undefined;
  private state: 'new' | 'started' | 'stopped' = 'new';

  /** True once stop() began: a recovery round under way asks nothing more. */
  get stopping(): boolean {
    return this.state === 'stopped';
  }
  /** True from the end of start() to the first step of stop(): only then are calls taken. */
  private serving = false;
  /** Business calls taken and not yet finished; stop() waits for them before rolling back what is open. */
  private readonly businessCalls = new InFlight();
  /** stop() waited stopGraceMs: calls still under way are abandoned, and a handler not yet started never runs. */
  private stopGraceOver = false;
  /**
   * This process's incarnation, in every branch it reports: a branch reported again by another incarnation of the
   * same instance id was opened anew after a restart (its earlier calls' work is gone), and the initiator rolls
   * the transaction back instead of committing the later calls alone.
   */
  readonly incarnation = randomBytes(9).toString('base64url');

  constructor(options: ParticipantOptions) {
    this.config = compileParticipantOptions(options);
    this.clients = new CoordinatorClients({ tls: this.config.tls, tracing: this.config.tracing });
    for (const r of options.resources) this.resources.set(r.name, r);
    const clock = this.config.clock;
    this.deadlines = new DeadlineQueue(clock, { after: (ms, fn) => clock.setTimeout(fn, ms) }, (key) =>
      this.onDeadline(key),
    );
    this.phases = new BranchPhases({
      config: this.config,
      resources: this.resources,
      work: this.work,
      log: this.log,
    });
  }

  /**
   * Opens the store and the resources, rolls back the branches whose work a previous run lost, resolves the
   * in-doubt ones with their coordinators, and starts the periodic recovery. A start that fails (a twin refused
   * by a lock, a database down) stops again what it had started, locks included, and leaves the participant
   * stopped: make a new one to try again.
   */
  async start(): Promise<void> {
    if (this.state !== 'new') throw new FailedPreconditionError(`participant is ${this.state}`);
    this.state = 'started';
    const owner = { instanceId: this.config.instanceId, service: this.config.service };
    const reached: Resource[] = [];
    let opened = false;
    try {
      await this.store.open(owner);
      opened = true;
      for (const r of this.resources.values()) {
        reached.push(r);
        await r.start?.(owner);
      }
      await rollbackLostWork(this);
      await this.recoverNow(0);
    } catch (err) {
      this.state = 'stopped';
      const undo = (what: string) => (e: unknown) =>
        this.log.warn(`${what} after a failed start failed`, { err: e });
      for (const r of reached.reverse()) await r.stop?.().catch(undo(`stopping resource ${r.name}`));
      if (opened) await this.store.close().catch(undo('closing the branch store'));
      this.clients.close();
      throw err;
    }
    this.scheduleRecovery();
    this.serving = true;
    this.log.info('started', describeConfig(this.config));
  }

  /**
   * Stops recovery, waits for the business calls under way (at most `stopGraceMs`, then abandons those still in
   * their handlers), rolls back unprepared branches (their work dies with this process), closes everything.
   */
  async stop(): Promise<void> {
    if (this.state !== 'started') return;
    this.state = 'stopped';
    this.serving = false; // from here calls are refused: none may start work that stop would not roll back
    this.recoveryTimer?.cancel();
    // A call taken just before may still be opening its branch: its work must be in `live` before the sweep.
    await this.drainBusinessCalls();
    await this.recovering;
    for (const key of this.work.keys()) {
      await this.locked(key, async () => {
        const rec = await this.store.get(key);
        if (rec?.status === 'registered') await this.rollbackLocked(rec, 'participant stopped');
      }).catch((err) => this.log.warn('rollback at stop failed', { xid: key.xid, err }));
    }
    this.work.clear();
    for (const r of [...this.resources.values()].reverse()) await r.stop?.();
    await this.store.close();
    this.clients.close();
  }

  /**
   * Waits for the business calls under way, at most `stopGraceMs`; then abandons those in their handlers or in their
   * resource's begin (each fails and rolls its branch back, as at the deadline) and waits for them to have done so.
   * A call in a branch store write is not cut (a write under way cannot be taken back; PgBranchStore bounds its
   * statements by queryTimeoutMs), and its handler, once reached, does not run.
   */
  private async drainBusinessCalls(): Promise<void> {
    if (this.businessCalls.size === 0) return;
    let timer: Timer | undefined;
    const inTime = await new Promise<boolean>((resolve) => {
      timer = this.clock.setTimeout(() => resolve(false), this.config.stopGraceMs);
      void this.businessCalls.whenIdle().then(() => resolve(true));
    });
    timer?.cancel();
    if (inTime) return;
    this.stopGraceOver = true;
    const running = this.work.withRunningCalls();
    this.log.warn('stop: abandoning business calls still running after stopGraceMs', {
      calls: running.length,
      stopGraceMs: this.config.stopGraceMs,
    });
    for (const work of running) this.abandon(work, 'stop');
    await this.businessCalls.whenIdle();
  }

  /**
   * One recovery round now: branches prepared at least `minAgeMs` ago (default inDoubtAfterMs) are resolved
   * with their coordinators, unprepared ones past their deadline rolled back, old final ones purged.
   */
  recoverNow(minAgeMs = this.config.inDoubtAfterMs): Promise<void> {
    const run = async () => {
      await recoverInDoubt(this, this.clients, minAgeMs);
      await rollbackExpired(this);
      await this.store.purge(this.clock.now() - this.config.retentionMs);
    };
    const p = (this.recovering ?? Promise.resolve()).then(run, run);
    this.recovering = p.catch((err) => this.log.warn('recovery round failed', { err }));
    return p;
  }

  private scheduleRecovery(): void {
    this.recoveryTimer = this.clock.setTimeout(() => {
      if (this.state !== 'started') return;
      this.recoverNow()
        .catch(() => undefined)
        .finally(() => {
          if (this.state === 'started') this.scheduleRecovery();
        });
    }, this.config.recoveryIntervalMs);
  }

  /** True while the branch has volatile work in this process. */
  isLive(key: BranchKey): boolean {
    return this.work.has(key);
  }

  get clock(): Clock {
    return this.config.clock;
  }

  get store(): BranchStore {
    return this.config.store;
  }

  resource(name: string): Resource | undefined {
    return this.resources.get(name);
  }

  allResources(): Resource[] {
    return [...this.resources.values()];
  }

  branchIdFor(resource: string): string {
    return `${resource}@${this.config.instanceId}`;
  }

  /** The branch as this participant reports it, with the incarnation of this process (its work lives here). */
  refFor(record: BranchRecord): ReportedBranch {
    return {
      incarnation: this.incarnation,
      branchId: record.branchId,
      service: this.config.service,
      instanceId: this.config.instanceId,
      address: this.config.address,
      resource: record.resource,
    };
  }

  /** Runs `fn` under the branch's lock (exported for recovery). */
  locked<T>(key: BranchKey, fn: () => Promise<T>): Promise<T> {
    return this.lock.run(`${key.xid}|${key.branchId}`, fn);
  }

  /**
   * A business call in transaction `wire` on `resourceName`: gets or creates the branch and runs `fn` in it,
   * under its lock. Refuses a branch already rolled back (BranchRolledBackError) or sealed by prepare/commit.
   * A call that fails on a branch it created rolls the branch back at once (that branch never reached the
   * initiator, and its connection is better freed now than at the deadline).
   */
  async withBranch<T>(
    wire: WireContext,
    resourceName: string,
    fn: (scope: BranchScope, ref: ReportedBranch) => Promise<T>,
  ): Promise<T> {
    this.assertServing();
    const resource = this.resources.get(resourceName);
    if (!resource) throw new InvalidArgumentError(`participant: no resource '${resourceName}'`);
    const key = { xid: wire.xid, branchId: this.branchIdFor(resourceName) };
    if (wire.held?.includes(key.branchId)) {
      throw new ReentrantBranchCallError(
        `branch ${key.branchId} of ${key.xid} is held by a call up this call's own chain ` +
          `(${[...wire.held, key.branchId].join(' → ')}): it would wait for itself until the transaction's ` +
          'deadline; make the call outside the transaction, or do the work in the outer call',
        { details: { xid: key.xid, branchId: key.branchId } },
      );
    }
    this.businessCalls.enter();
    try {
      return await this.branchCall(key, wire, resource, resourceName, fn);
    } finally {
      this.businessCalls.leave();
    }
  }

  private branchCall<T>(
    key: BranchKey,
    wire: WireContext,
    resource: Resource,
    resourceName: string,
    fn: (scope: BranchScope, ref: ReportedBranch) => Promise<T>,
  ): Promise<T> {
    return this.locked(key, async () => {
      let rec = await this.store.get(key);
      let created = false;
      if (rec?.status === 'registered' && !this.work.has(key)) {
        await this.rollbackLocked(rec, 'branch work was lost in a restart');
        rec = await this.store.get(key);
      }
      if (rec?.status === 'rolled_back') {
        throw new BranchRolledBackError(
          `branch ${key.branchId} of ${key.xid} is rolled back: ${rec.reason}`,
          {
            details: { xid: key.xid, branchId: key.branchId },
          },
        );
      }
      if (rec && rec.status !== 'registered') {
        throw new BranchSealedError(`branch ${key.branchId} of ${key.xid} is ${rec.status}: no more work`, {
          details: { xid: key.xid, branchId: key.branchId },
        });
      }
      const doomed = rec && this.work.get(key)?.doomed;
      if (doomed !== undefined) {
        // Its rollback failed and is pending: a call that ran now would add work that can only be undone.
        throw new BranchDoomedError(
          `branch ${key.branchId} of ${key.xid} must roll back (${doomed}); its rollback is not done yet: no more work`,
          { details: { xid: key.xid, branchId: key.branchId } },
        );
      }
      if (!rec) {
        rec = (
          await this.store.transition(
            key,
            'registered',
            {
              resource: resourceName,
              coordinatorAddress: wire.coordinatorAddress,
              deadlineAtMs: wire.deadlineAtMs,
            },
            { lazy: resource.volatileWork === true },
          )
        ).record;
        const entry = this.work.open(key);
        created = true;
        // Before begin: a branch whose rollback fails below stays doomed, and its deadline tries it again.
        entry.timer = this.deadlines.add(wire.deadlineAtMs + this.config.deadlineGraceMs, entry.key);
        try {
          if (resource.begin) entry.handle = await this.beginWork(entry, resource, rec);
        } catch (err) {
          const why =
            err === entry.beginning?.abandonedWith
              ? (err as Error).message
              : `resource could not begin: ${(err as Error).message}`;
          await this.rollbackFailedCall(rec, why);
          throw err;
        } finally {
          entry.beginning = undefined;
        }
      }
      const work = this.work.get(key)!;
      const scope: BranchScope = {
        xid: key.xid,
        branchId: key.branchId,
        resource: resourceName,
        deadlineAtMs: rec.deadlineAtMs,
        handle: work.handle,
        record: async (data) => {
          assertNotAbandoned(scope); // an abandoned handler's record could land after its branch's cancel
          // Tracked: the rollback of an abandoned call waits for a write under way, so it undoes what it names.
          const write = this.store.setData(key, data);
          (work.recording ??= new Set()).add(write);
          try {
            await write;
          } finally {
            work.recording.delete(write);
          }
          assertNotAbandoned(scope); // landed after the call was abandoned: the rollback saw it, nothing more may run
        },
      };
      // A later call on a resource that can undo one call alone is marked first (PostgreSQL: a savepoint).
      const undoable = !created && resource.markCall !== undefined && resource.undoCall !== undefined;
      // Only a call whose mark was set can be undone alone: undoing without one would take out an earlier
      // call's work (PostgreSQL: ROLLBACK TO the previous call's savepoint of the same name).
      let marked = false;
      try {
        if (undoable) {
          await resource.markCall!(rec, scope.handle);
          marked = true;
        }
        const ref = this.refFor(rec);
        const value = await this.runHandler(work, scope, () => fn(scope, ref));
        work.call = undefined;
        return value;
      } catch (err) {
        const call = work.call;
        work.call = undefined;
        if (call && err === call.abandonedWith) {
          this.shutOut(work, call);
          // A record() under way lands first, so the rollback below reads it (a reservation's key, to cancel).
          if (work.recording?.size) await Promise.allSettled([...work.recording]);
        }
        let why = `${created ? 'the' : 'a later'} business call failed: ${(err as Error).message}`;
        // An abandoned call's branch rolls back whole: its undo would queue on the handle behind whatever its
        // handler is stuck in, and the branch is past its deadline (or its participant stopping) anyway.
        if (marked && !(err instanceof BusinessCallAbandonedError)) {
          const undone = await resource.undoCall!(rec, scope.handle).then(
            () => true,
            (undoErr: Error) => ((why += ` (and could not be undone alone: ${undoErr.message})`), false),
          );
          if (undone) throw err; // the branch goes on without the failed call's work
        }
        // Otherwise whatever the failed call did is in the branch's work: the branch is rolled back. A first
        // call's branch never reached the initiator, which may go on without it; a later call's branch is in the
        // initiator's list, and its prepare now votes ABORT.
        // Doomed first: if reading the record throws, the branch must still never prepare the failed call's work.
        this.work.doom(key, why);
        const now = await this.store.get(key);
        if (now?.status === 'registered') await this.rollbackFailedCall(now, why);
        throw err;
      }
    });
  }

  /**
   * The resource's begin, which the branch's deadline timer or stop() stop waiting for as for a handler
   * (`Work.beginning`, `abandon`): a begin that never returns (a system that takes the request and never answers)
   * fails its call at the deadline plus grace, or once stop() waited stopGraceMs — the branch rolled back, its lock
   * freed — instead of holding both, and stop(), for good. What such a begin returns later is rolled back when it
   * comes (it never reached a handler).
   */
  private beginWork(work: Work, resource: Resource, rec: BranchRecord): Promise<unknown> {
    const late = this.tooLate(work);
    if (late) return Promise.reject(late);
    return new Promise((resolve, reject) => {
      const pending: PendingBegin = { fail: reject, abandonedWith: undefined };
      work.beginning = pending;
      resource.begin!(rec).then(
        (handle) => {
          if (!pending.abandonedWith) return resolve(handle);
          const ids = { xid: rec.xid, branchId: rec.branchId };
          this.log.warn(
            "a resource's begin returned after its call was abandoned; rolling its work back",
            ids,
          );
          resource
            .rollback(rec, handle, `${pending.abandonedWith.message} (its begin returned late)`)
            .catch((err: unknown) =>
              this.log.warn('the late begin could not be rolled back', { ...ids, err }),
            );
        },
        (err: unknown) => {
          if (!pending.abandonedWith) return reject(err);
          this.log.warn("a resource's begin failed after its call was abandoned", {
            xid: rec.xid,
            branchId: rec.branchId,
            err,
          });
        },
      );
    });
  }

  /**
   * Runs the business handler, as a call the branch's deadline timer or stop() can abandon (`Work.call`, `abandon`).
   * One promise more per call and no timer of its own: the branch's deadline timer does the timing. A call that
   * reaches its handler after that timer fired, or once stop() gave up waiting, is abandoned before it runs.
   */
  private runHandler<T>(work: Work, scope: BranchScope, handler: () => Promise<T>): Promise<T> {
    const late = this.tooLate(work);
    if (late) return Promise.reject(late);
    return new Promise<T>((resolve, reject) => {
      const running = handler();
      work.call = { running, scope, fail: reject, abandonedWith: undefined };
      running.then(resolve, reject);
    });
  }

  /**
   * Stops waiting for the call in the branch's handler, or in its resource's begin: the call fails at once with
   * BusinessCallAbandonedError and goes on as a failed call (`branchCall`: the branch rolled back, then its lock
   * released). A no-op for a call whose handler settled first (its answer stands).
   */
  private abandon(work: Work, cause: AbandonCause): void {
    for (const [step, ran] of [
      [work.beginning, false],
      [work.call, true],
    ] as const) {
      if (!step || step.abandonedWith) continue;
      step.abandonedWith = this.abandonedError(work, cause, ran);
      step.fail(step.abandonedWith);
    }
  }

  /** The error for a step that would start after the branch's deadline timer fired or stop() gave up waiting. */
  private tooLate(work: Work): BusinessCallAbandonedError | undefined {
    if (!work.expired && !this.stopGraceOver) return undefined;
    return this.abandonedError(work, work.expired ? 'deadline' : 'stop', false);
  }

  /**
   * The call was abandoned (its handler had not settled): the handler runs on, shut out of its branch, and how it
   * ends is only logged (its rejection never unhandled); the branch's rollbacks are told its handle may be in use.
   */
  private shutOut(work: Work, call: RunningCall): void {
    work.abandoned = true;
    closeAbandoned(call.scope);
    const ids = { xid: work.key.xid, branchId: work.key.branchId };
    this.log.warn('abandoned a business call that was still running', {
      ...ids,
      why: call.abandonedWith?.message,
    });
    call.running.then(
      () => this.log.warn('an abandoned business call returned at last; its result is ignored', ids),
      (late: unknown) =>
        this.log.warn('an abandoned business call failed at last; its error is ignored', {
          ...ids,
          err: late,
        }),
    );
  }

  private abandonedError(work: Work, why: AbandonCause, ran: boolean): BusinessCallAbandonedError {
    const { xid, branchId } = work.key;
    const when =
      why === 'deadline'
        ? `the transaction's deadline plus deadlineGraceMs (${this.config.deadlineGraceMs} ms) passed`
        : `the participant stopped and stopGraceMs (${this.config.stopGraceMs} ms) passed`;
    return new BusinessCallAbandonedError(
      ran
        ? `branch ${branchId} of ${xid}: its business call was abandoned, still running when ${when}; the branch is rolled back`
        : `branch ${branchId} of ${xid}: its business call was abandoned before its handler ran (${when}); the branch is rolled back`,
      { details: { xid, branchId } },
    );
  }

  /** Phase 1. Unknown branch: recorded as rolled back, votes ABORT (so a late business call is refused). */
  prepare(key: BranchKey, resourceName: string): Promise<PrepareVote> {
    if (!this.serving) return Promise.reject(this.notServing());
    return this.locked(key, () => this.phases.prepare(key, resourceName));
  }

  /**
   * Phase 2 commit (idempotent), or one-phase commit. Two-phase: an unknown branch is BranchNotFoundError
   * (NOT_FOUND), a rolled-back one IllegalBranchTransitionError (FAILED_PRECONDITION). An unknown branch whose id
   * names another instance is BranchOfAnotherInstanceError (UNAVAILABLE), here and in prepare and rollback.
   */
  commit(key: BranchKey, resourceName: string, onePhase: boolean): Promise<OnePhaseResult> {
    if (!this.serving) return Promise.reject(this.notServing());
    return this.locked(key, () => this.phases.commit(key, resourceName, onePhase));
  }

  /**
   * Rollback in any phase (idempotent); an unknown branch is recorded as rolled back (null rollback), except
   * another instance's (BranchNotFoundError, nothing recorded).
   */
  rollback(key: BranchKey, resourceName: string, reason: string): Promise<void> {
    if (!this.serving) return Promise.reject(this.notServing());
    return this.locked(key, () => this.phases.rollbackRequested(key, resourceName, reason));
  }

  /**
   * The unfinished branches its store holds, in doubt (`prepared`) or not yet prepared (`registered`), a page at a
   * time (ParticipantAdmin.ListBranches, `dmtp branch list --participant`). A shared store (PgBranchStore's
   * table) lists every instance's. Bad query: InvalidArgumentError, nothing read.
   */
  async listBranches(q: BranchListQuery = {}): Promise<BranchListPage> {
    const query = checkedQuery(q);
    this.assertServing();
    return branchPage(await this.store.list(query.statuses), query, this.clock.now());
  }

  /** Rolls a branch back; the caller holds its lock (recovery). Committed → IllegalBranchTransitionError. */
  rollbackLocked(rec: BranchRecord, reason: string): Promise<void> {
    return this.phases.rollback(rec, reason);
  }

  /**
   * Rolls back the branch of a failed call. The caller gets its handler's own error whatever happens here (the
   * call failed for its own reason; undoing the branch is this participant's business): a rollback that fails
   * leaves the branch doomed (BranchPhases.rollback) — it never commits, refuses more calls, and is rolled back
   * again by the coordinator's Rollback, a Prepare or one-phase Commit, its deadline, or recovery.
   */
  private async rollbackFailedCall(rec: BranchRecord, why: string): Promise<void> {
    await this.rollbackLocked(rec, why).catch((err) =>
      this.log.warn('failed call: its branch did not roll back; doomed, to be rolled back again', {
        xid: rec.xid,
        branchId: rec.branchId,
        err,
      }),
    );
  }

  private assertServing(): void {
    if (!this.serving) throw this.notServing();
  }

  private notServing(): UnavailableError {
    return new UnavailableError(
      `participant ${this.config.service}/${this.config.instanceId} is ${this.state === 'new' ? 'not started' : this.state === 'started' ? 'starting' : 'stopped'}`,
      { details: { service: this.config.service, instanceId: this.config.instanceId } },
    );
  }

  /**
   * The branch's deadline plus grace: a call still in its handler is abandoned at once (it rolls the branch back
   * and frees the lock), and the rollback below, behind it, finds the branch rolled back already.
   */
  private onDeadline(key: BranchKey): void {
    const work = this.work.get(key);
    if (work) {
      work.expired = true;
      this.abandon(work, 'deadline');
    }
    this.locked(key, async () => {
      const rec = await this.store.get(key);
      if (rec?.status !== 'registered') return;
      this.log.info('rolling back a branch never prepared by its deadline', {
        xid: key.xid,
        branchId: key.branchId,
      });
      await this.rollbackLocked(rec, 'transaction deadline passed before prepare');
    }).catch((err) => this.log.warn('deadline rollback failed', { xid: key.xid, err }));
  }
}
