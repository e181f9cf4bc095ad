/**
 * What a participant does when its coordinator decides: prepare (phase 1), commit (phase 2, or one phase for a
 * lone branch) and rollback, each step choosing by the branch's recorded state. Every method here runs under the
 * branch's lock, which the Participant holds; the resource acts before the store records the new state, so the
 * store never claims more than the resource did.
 */
import { FailedPreconditionError, parseXid, type Logger } from '../common';
import type { BranchKey, BranchRecord, BranchStore } from './branch-store';
import type { BranchWork, Work } from './branch-work';
import {
  BranchNotFoundError,
  BranchOfAnotherInstanceError,
  BranchOutcomeForgottenError,
  IllegalBranchTransitionError,
  ResourceFailedError,
} from './errors';
import type { ParticipantConfig } from './participant-options';
import type { OnePhaseResult, PrepareVote, Resource, RollbackInfo } from './resource';

/** The longest rollback reason from the coordinator a branch keeps (characters). */
const MAX_REASON_CHARS = 1_000;

const ABANDONED: RollbackInfo = Object.freeze({ abandoned: true });
const PLAIN: RollbackInfo = Object.freeze({});

/** Clock skew allowed between an xid's minter and this participant when judging what purging may have removed. */
const PURGE_SKEW_MS = 60_000;

export interface BranchPhasesDeps {
  config: ParticipantConfig;
  resources: ReadonlyMap<string, Resource>;
  work: BranchWork;
  log: Logger;
}

export class BranchPhases {
  constructor(private readonly d: BranchPhasesDeps) {}

  private get store(): BranchStore {
    return this.d.config.store;
  }

  /** Phase 1. Unknown branch: recorded as rolled back, votes ABORT (so a late business call is refused). */
  async prepare(key: BranchKey, resourceName: string): Promise<PrepareVote> {
    const rec = await this.store.get(key);
    if (!rec) {
      this.assertOwn(key);
      const reason = 'prepare for an unknown branch (never enlisted here, or its work was lost)';
      await this.store.transition(key, 'rolled_back', { resource: resourceName, reason });
      return { vote: 'abort', reason };
    }
    switch (rec.status) {
      case 'rolled_back':
        return { vote: 'abort', reason: rec.reason || 'rolled back' };
      case 'prepared':
        return { vote: 'prepared' };
      case 'committed':
        return rec.reason === 'read-only' ? { vote: 'read_only' } : { vote: 'prepared' };
    }
    const work = this.d.work.get(key);
    if (!work) {
      this.assertOwn(key); // a sibling's branch in a shared store has its work there, not here
      const reason = 'branch work was lost in a restart';
      await this.rollback(rec, reason);
      return { vote: 'abort', reason };
    }
    if (work.doomed !== undefined)
      return { vote: 'abort', reason: await this.rollbackDoomed(rec, work.doomed) };
    return this.prepareWork(key, rec, work);
  }

  /** Prepares a registered branch with live work and records the vote. */
  private async prepareWork(key: BranchKey, rec: BranchRecord, work: Work): Promise<PrepareVote> {
    const resource = this.resourceOf(rec);
    let vote: PrepareVote;
    try {
      vote = await resource.prepare(rec, work.handle);
    } catch (err) {
      vote = { vote: 'abort', reason: `prepare failed: ${(err as Error).message}` };
    }
    this.d.work.forget(key); // prepare consumed the handle, whatever the vote
    if (vote.vote === 'abort') {
      await this.rollback(rec, vote.reason);
      return vote;
    }
    // A store write that fails may still have landed (a connection lost after the UPDATE committed, an fsync
    // error after the line was written): the resource is left prepared and the error goes to the coordinator.
    // Undoing it here would let a record that says "prepared" meet a resource that rolled back, and a repeated
    // commit report committed work that is gone. What the record says decides later, as after a crash right
    // here: "prepared" is committed or rolled back by phase 2, "registered" is rolled back (ROLLBACK PREPARED).
    if (vote.vote === 'read_only') await this.store.transition(key, 'committed', { reason: 'read-only' });
    else await this.store.transition(key, 'prepared');
    return vote;
  }

  /**
   * Phase 2 commit (idempotent), or one-phase commit. Two-phase: an unknown branch is BranchNotFoundError
   * (NOT_FOUND), a rolled-back one IllegalBranchTransitionError (FAILED_PRECONDITION). An unknown branch of
   * another instance is BranchOfAnotherInstanceError (UNAVAILABLE) here and in prepare and rollback.
   */
  async commit(key: BranchKey, resourceName: string, onePhase: boolean): Promise<OnePhaseResult> {
    const rec = await this.store.get(key);
    if (!rec) this.assertOwn(key);
    if (onePhase && (!rec || rec.status === 'registered')) return this.commitOnePhase(key, rec, resourceName);
    if (onePhase && rec?.status === 'rolled_back') return { committed: false, reason: rec.reason };
    const details = { xid: key.xid, branchId: key.branchId };
    if (!rec)
      throw new BranchNotFoundError(`branch ${key.branchId} of ${key.xid} is unknown here`, { details });
    if (rec.status === 'registered') {
      throw new IllegalBranchTransitionError(`branch ${key.branchId} of ${key.xid}: commit without prepare`, {
        details,
      });
    }
    if (rec.status === 'committed') return { committed: true };
    if (rec.status === 'rolled_back') {
      this.d.log.error('commit for a rolled-back branch', details);
      await this.store.transition(key, 'committed'); // throws IllegalBranchTransitionError
    }
    const resource = this.resourceOf(rec);
    await byResource(rec, 'commit', () => resource.commit(rec, undefined, false));
    await this.store.transition(key, 'committed');
    return { committed: true };
  }

  private async commitOnePhase(
    key: BranchKey,
    rec: BranchRecord | undefined,
    resourceName: string,
  ): Promise<OnePhaseResult> {
    const work = this.d.work.get(key);
    if (!rec && this.mayHavePurged(key.xid)) {
      throw new BranchOutcomeForgottenError(
        `branch ${key.branchId} of ${key.xid} is not known here, and its transaction is older than the ` +
          `participant's retentionMs (${this.d.config.retentionMs} ms): it may have committed and been purged`,
        { details: { xid: key.xid, branchId: key.branchId } },
      );
    }
    if (!rec || !work) {
      this.assertOwn(key);
      const reason = rec ? 'branch work was lost in a restart' : 'one-phase commit for an unknown branch';
      if (rec) await this.rollback(rec, reason);
      else await this.store.transition(key, 'rolled_back', { resource: resourceName, reason });
      return { committed: false, reason };
    }
    if (work.doomed !== undefined)
      return { committed: false, reason: await this.rollbackDoomed(rec, work.doomed) };
    const resource = this.resourceOf(rec);
    if (resource.onePhaseByPrepare) {
      // Prepared and recorded first: a commit whose answer is lost is then asked again (and repeated, as phase 2
      // is), never reported as not committed while it may have committed.
      const vote = await this.prepareWork(key, rec, work);
      if (vote.vote === 'abort') return { committed: false, reason: vote.reason };
      if (vote.vote === 'read_only') return { committed: true };
      await byResource(rec, 'commit', () =>
        resource.commit({ ...rec, status: 'prepared' }, undefined, false),
      );
      await this.store.transition(key, 'committed');
      return { committed: true };
    }
    let result: OnePhaseResult;
    try {
      result = (await resource.commit(rec, work.handle, true)) ?? { committed: true };
    } catch (err) {
      result = { committed: false, reason: `one-phase commit failed: ${(err as Error).message}` };
    }
    this.d.work.forget(key); // commit consumed the handle, whatever the result
    if (!result.committed) {
      await this.rollback(rec, result.reason ?? 'one-phase commit rolled back');
      return result;
    }
    await this.store.transition(key, 'committed');
    return result;
  }

  /**
   * The coordinator's rollback in any phase (idempotent); an unknown branch is recorded (null rollback), unless
   * it is another instance's: that is NOT_FOUND, nothing recorded (the coordinator looks the instance up, and
   * under presumed abort may stop asking: the real branch, if prepared, asks for its outcome and is told ABORT).
   */
  async rollbackRequested(key: BranchKey, resourceName: string, wireReason: string): Promise<void> {
    // The reason comes off the wire: it is kept in the record and told again (a later Prepare's vote), so bounded.
    const reason =
      wireReason.length > MAX_REASON_CHARS ? `${wireReason.slice(0, MAX_REASON_CHARS)}…` : wireReason;
    const rec = await this.store.get(key);
    if (!rec) {
      this.assertOwn(key, 'rollback');
      await this.store.transition(key, 'rolled_back', {
        resource: resourceName,
        reason: reason || 'null rollback',
      });
      return;
    }
    if (rec.status === 'rolled_back' || (rec.status === 'committed' && rec.reason === 'read-only')) return;
    await this.rollback(rec, reason || 'rolled back by the coordinator');
  }

  /**
   * Rolls a branch back: its resource, then its record. Committed → IllegalBranchTransitionError. A resource
   * that fails to roll back live work leaves the branch doomed (`Work.doomed`): it was told to roll back, so it
   * never commits, and its work and `registered` record stay for the next attempt. The work of an abandoned call
   * is rolled back as such (`RollbackInfo.abandoned`): its handler may still be using the handle.
   */
  async rollback(rec: BranchRecord, reason: string): Promise<void> {
    if (rec.status === 'committed') await this.store.transition(rec, 'rolled_back'); // throws
    const work = this.d.work.get(rec);
    // A prepared branch of a resource no longer configured (renamed, removed) holds its prepared transaction and
    // locks there: recording it rolled back without rolling that back would leave them for good.
    if (rec.status === 'prepared' || this.d.resources.has(rec.resource)) {
      const resource = this.resourceOf(rec);
      try {
        const info = work?.abandoned ? ABANDONED : PLAIN;
        await byResource(rec, 'roll back', () => resource.rollback(rec, work?.handle, reason, info));
      } catch (err) {
        this.d.work.doom(rec, reason);
        throw err;
      }
    }
    this.d.work.forget(rec);
    await this.store.transition(rec, 'rolled_back', { reason });
  }

  /**
   * A doomed branch asked to prepare or to commit in one phase: its answer is no, whether or not this attempt at
   * the rollback succeeds (one that fails is tried again by the coordinator's Rollback, the deadline or
   * recovery). Returns the reason to answer with.
   */
  private async rollbackDoomed(rec: BranchRecord, reason: string): Promise<string> {
    await this.rollback(rec, reason).catch((err) =>
      this.d.log.warn('doomed branch: rollback failed again; it is retried', {
        xid: rec.xid,
        branchId: rec.branchId,
        err,
      }),
    );
    return reason;
  }

  /**
   * The branch's resource. One recorded under a name this participant no longer has (renamed or removed in an
   * upgrade) is FAILED_PRECONDITION, nothing recorded: configure it again to finish the branch.
   */
  private resourceOf(rec: BranchRecord): Resource {
    const resource = this.d.resources.get(rec.resource);
    if (resource) return resource;
    throw new FailedPreconditionError(
      `branch ${rec.branchId} of ${rec.xid} is ${rec.status} on resource '${rec.resource}', which this ` +
        'participant no longer has: configure it again to finish the branch',
      { details: { xid: rec.xid, branchId: rec.branchId, resource: rec.resource } },
    );
  }

  /**
   * A branch without a record or work here must be this instance's — its id is `<resource>@<instanceId>` with one
   * of its resources and its instance id — before anything is answered or recorded for it: another instance's
   * branch reached the wrong address. BranchOfAnotherInstanceError (UNAVAILABLE: asked again, elsewhere), or
   * for a rollback BranchNotFoundError (nothing to roll back here).
   */
  private assertOwn(key: BranchKey, step: 'rollback' | 'other' = 'other'): void {
    const me = this.d.config.instanceId;
    const at = key.branchId.lastIndexOf('@');
    if (key.branchId.slice(at + 1) === me && this.d.resources.has(key.branchId.slice(0, at))) return;
    const text = `branch ${key.branchId} of ${key.xid} is unknown here and not of this instance (${me}): wrong address?`;
    const details = { details: { xid: key.xid, branchId: key.branchId, instanceId: me } };
    throw step === 'rollback'
      ? new BranchNotFoundError(text, details)
      : new BranchOfAnotherInstanceError(text, details);
  }

  /**
   * Could a final record of this xid's branches have been purged already? Purging forgets branches last changed
   * more than retentionMs ago, and no branch changes before its xid is minted (allowing some clock skew).
   */
  private mayHavePurged(xid: string): boolean {
    const { createdAtMs } = parseXid(xid);
    return createdAtMs < this.d.config.clock.now() - this.d.config.retentionMs + PURGE_SKEW_MS;
  }
}

/**
 * Runs a resource's phase-2 step; what it throws becomes ResourceFailedError (UNAVAILABLE: the coordinator asks
 * again), whatever status it carried. A resource calling a legacy system over gRPC may fail with NOT_FOUND or
 * FAILED_PRECONDITION of its own, which the coordinator would read as this participant's protocol answer ("no
 * such branch": done) and stop asking while the branch is still prepared.
 */
async function byResource<T>(rec: BranchRecord, step: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    const why = err instanceof Error ? err.message : String((err as { details?: unknown })?.details ?? err);
    throw new ResourceFailedError(
      `resource '${rec.resource}' failed to ${step} branch ${rec.branchId} of ${rec.xid}: ${why}`,
      { details: { xid: rec.xid, branchId: rec.branchId, resource: rec.resource }, cause: err },
    );
  }
}
