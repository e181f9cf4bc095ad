/**
 * The volatile side of a participant's branches: for each branch with work in this process, the resource's
 * handle (e.g. a PostgreSQL connection inside BEGIN) and the timer that rolls it back at its deadline. What the
 * store records survives a restart; what is here does not, and recovery treats a `registered` branch missing
 * here as work lost.
 */
import type { Timer } from '../common';
import type { BranchScope } from './branch-context';
import type { BranchKey } from './branch-store';

export interface Work {
  readonly key: BranchKey;
  /** What the resource's begin() returned; handed back to its prepare/commit/rollback. */
  handle: unknown;
  /** Rolls the branch back if it is not prepared by its deadline (plus grace). */
  timer?: Timer;
  /**
   * Why the branch must roll back, once a rollback of it failed (a failed call's work is in it, and the
   * resource's undo threw): from then on it never commits — prepare votes ABORT, a one-phase commit answers not
   * committed, a business call is refused — and every one of those, the coordinator's Rollback, the deadline
   * timer and recovery try the rollback again. The record stays `registered`, which a restart rolls back too.
   */
  doomed?: string;
  /** The business call in its handler now (calls hold the branch's lock: at most one per branch). */
  call?: RunningCall;
  /** The resource's begin() under way for the branch's first call (abandoned as a handler is). */
  beginning?: PendingBegin;
  /** The deadline timer fired: a call still to reach its handler is abandoned before the handler runs. */
  expired?: boolean;
  /**
   * A call in this branch was abandoned, its handler maybe still using the handle: every rollback of the branch
   * tells the resource so (`RollbackInfo.abandoned`), which then neither waits for the handle nor reuses it.
   */
  abandoned?: boolean;
  /** Writes of the business call's `record()` under way (an abandoned call's rollback waits for them). */
  recording?: Set<Promise<unknown>>;
}

/** Why a business call is abandoned: its branch's deadline plus grace passed, or stop() waited its grace. */
export type AbandonCause = 'deadline' | 'stop';

/**
 * A step of a business call that the deadline timer or stop() can stop waiting for: its handler (`RunningCall`)
 * or, for a branch's first call, its resource's begin(). The participant's `abandon` fails it through `fail`.
 */
export interface Abandonable {
  /** Rejects what the call awaits instead of the step (a no-op once the step settled). */
  readonly fail: (err: Error) => void;
  /** The error `fail` was given, once abandoned. */
  abandonedWith?: Error;
}

/** A resource's begin() under way for a branch's first call. */
export type PendingBegin = Abandonable;

/**
 * A business handler under way. Plain data (the hot path allocates no closure for it): the call, seeing
 * `abandonedWith` come back, shuts the handler out of `scope` and only logs how `running` ends.
 */
export interface RunningCall extends Abandonable {
  /** The handler's own promise. */
  readonly running: Promise<unknown>;
  readonly scope: BranchScope;
}

export class BranchWork {
  private readonly byKey = new Map<string, Work>();

  has(key: BranchKey): boolean {
    return this.byKey.has(keyOf(key));
  }

  get(key: BranchKey): Work | undefined {
    return this.byKey.get(keyOf(key));
  }

  /** Records that the branch has work here from now on (its handle is filled in once the resource began). */
  open(key: BranchKey): Work {
    const w: Work = { key: { xid: key.xid, branchId: key.branchId }, handle: undefined };
    this.byKey.set(keyOf(key), w);
    return w;
  }

  /** The work is consumed (prepared, committed) or gone (rolled back): its timer stops. */
  forget(key: BranchKey): void {
    const k = keyOf(key);
    this.byKey.get(k)?.timer?.cancel();
    this.byKey.delete(k);
  }

  /** Marks the branch's work as bound to roll back (see `Work.doomed`); the first reason is kept. */
  doom(key: BranchKey, reason: string): void {
    const w = this.byKey.get(keyOf(key));
    if (w) w.doomed ??= reason;
  }

  /** The work of branches with a call in its handler or its resource's begin now (stop abandons them). */
  withRunningCalls(): Work[] {
    const out: Work[] = [];
    for (const w of this.byKey.values()) if (w.call || w.beginning) out.push(w);
    return out;
  }

  /** Branches with work here now (a copy: safe to forget while iterating). */
  keys(): BranchKey[] {
    return [...this.byKey.values()].map((w) => w.key);
  }

  /** Drops everything (stop): the resources' stop rolls back what was open. */
  clear(): void {
    for (const w of this.byKey.values()) w.timer?.cancel();
    this.byKey.clear();
  }
}

function keyOf(key: BranchKey): string {
  return `${key.xid}|${key.branchId}`;
}
