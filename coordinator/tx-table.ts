/**
 * The manager's memory of transactions: the live ones (undecided, or decided with phase 2 / events pending)
 * and a bounded, insertion-ordered record of recently finished outcomes, so a repeated Commit, Rollback or
 * outcome query after the log record is gone still gets the right answer. Also the read-only views: Get, List
 * (filtered, paged) and the outcome a participant is told.
 */
import { InvalidArgumentError, NotFoundError, parseXid, type Clock } from '../common';
import { Outcome, TxState, type Transaction } from '../proto/gen/dmtp/v1/types';
import type { ManagerLimits } from './options';
import { isCommit } from './state-machine';
import { boundedReason, newTx, toTransaction, type Tx } from './tx';
import { MAX_ID_CHARS } from './validate';

export interface ListQuery {
  /** TX_STATE_UNSPECIFIED (0) lists every state. */
  state?: TxState;
  olderThanMs?: number;
  pageSize?: number;
  pageToken?: string;
  /** Only transactions with a branch at this participant service ('' or unset: any). */
  service?: string;
  /** Only transactions with a branch at this participant instance ('' or unset: any). */
  instanceId?: string;
}

export interface Remembered {
  state: TxState;
  abortReason: string;
  decidedAtMs: number;
}

/**
 * How far an xid's mint time may be off this coordinator's clock (the initiator's clock minted it), as
 * participants allow (`CONTEXT_LIMITS.maxClockSkewMs`).
 */
export const XID_CLOCK_SKEW_MS = 60_000;

export class TxTable {
  private readonly live = new Map<string, Tx>();
  private readonly done = new Map<string, Remembered>();
  /**
   * Presumed aborts this manager answered for xids it had not heard of (a QueryOutcome, a Rollback), kept apart
   * from `done` so other outcomes never push one out: each is held until its xid can no longer commit anyway —
   * minted longer than the longest timeout (and clock skew) ago, a Commit for it is refused as late
   * (`mayStillCommit`). Past `maxRemembered` of them (a flood of made-up xids) the oldest goes.
   */
  private readonly presumed = new Map<string, Remembered & { untilMs: number }>();
  private readonly waiters = new Map<string, (() => void)[]>();
  /** When the table last became empty (at first: when it was made). */
  private emptySinceMs: number;

  constructor(
    private readonly owner: string,
    private readonly limits: ManagerLimits,
    private readonly clock: Clock,
  ) {
    this.emptySinceMs = clock.now();
  }

  /** How long nothing has been live here (since this table was made, or its last live one finished); 0 if any is. */
  quietForMs(): number {
    return this.live.size > 0 ? 0 : this.clock.now() - this.emptySinceMs;
  }

  find(xid: string): Tx | undefined {
    return this.live.get(xid);
  }

  finishedOutcome(xid: string): Remembered | undefined {
    return this.done.get(xid) ?? this.presumed.get(xid);
  }

  /**
   * Whether a Commit for `xid` (with this timeout) may still begin it: not once its deadline, counted from its
   * mint time, has passed by more than the clock skew allowed. Its participants roll unprepared branches back at
   * that deadline, and a presumed abort is held only that long.
   */
  mayStillCommit(xid: string, timeoutMs: number): boolean {
    return parseXid(xid).createdAtMs + timeoutMs + XID_CLOCK_SKEW_MS >= this.clock.now();
  }

  /** Remembers a presumed abort for an xid neither live nor finished here (see `presumed`); else nothing. */
  presumeAborted(xid: string, reason: string): void {
    if (this.live.has(xid) || this.finishedOutcome(xid)) return;
    const now = this.clock.now();
    for (const [x, r] of this.presumed) {
      if (r.untilMs >= now && this.presumed.size < this.limits.maxRemembered) break;
      this.presumed.delete(x);
    }
    const untilMs = parseXid(xid).createdAtMs + this.limits.maxTimeoutMs + XID_CLOCK_SKEW_MS;
    this.presumed.set(xid, {
      state: TxState.TX_STATE_ABORTED,
      abortReason: boundedReason(reason),
      decidedAtMs: now,
      untilMs,
    });
  }

  add(tx: Tx): void {
    this.live.set(tx.xid, tx);
    this.presumed.delete(tx.xid); // never both live and presumed aborted
  }

  /** Moves a finished transaction to the remembered outcomes (the oldest is dropped past maxRemembered). */
  forget(tx: Tx): void {
    if (this.live.delete(tx.xid) && this.live.size === 0) this.emptySinceMs = this.clock.now();
    this.remember(tx.xid, { state: tx.state, abortReason: tx.abortReason, decidedAtMs: tx.decidedAtMs });
    const w = this.waiters.get(tx.xid);
    if (w) {
      this.waiters.delete(tx.xid);
      for (const f of w) f();
    }
  }

  /** Adds a finished outcome (also one read back from the log's committed marker) unless the xid is live. */
  remember(xid: string, r: Remembered): void {
    if (this.live.has(xid)) return;
    const abortReason = boundedReason(r.abortReason);
    this.done.set(xid, abortReason === r.abortReason ? r : { ...r, abortReason });
    if (this.done.size > this.limits.maxRemembered) {
      const oldest = this.done.keys().next().value as string;
      this.done.delete(oldest);
      const minted = parseXid(oldest).createdAtMs;
      if (minted > this.forgottenMintedUpToMs) this.forgottenMintedUpToMs = minted;
    }
  }

  /**
   * The latest mint time of an xid whose outcome was dropped from memory (0: none yet). An xid minted no later
   * than this (give or take clock skew) may have finished and been forgotten: only the log can tell.
   */
  forgottenMintedUpToMs = 0;

  get size(): number {
    return this.live.size;
  }

  values(): IterableIterator<Tx> {
    return this.live.values();
  }

  view(xid: string): Transaction {
    parseXid(xid);
    const tx = this.live.get(xid);
    if (tx) return toTransaction(tx, this.owner);
    const r = this.finishedOutcome(xid);
    if (!r) {
      throw new NotFoundError(`transaction ${xid} is not known to coordinator ${this.owner}`, {
        details: { xid },
      });
    }
    const view = toTransaction(newTx(xid, 0, 0), this.owner);
    return { ...view, state: r.state, abortReason: r.abortReason, decidedAtMs: r.decidedAtMs };
  }

  list(q: ListQuery = {}): { transactions: Transaction[]; nextPageToken: string } {
    const size = q.pageSize || this.limits.defaultPageSize;
    if (!Number.isInteger(size) || size < 0 || size > this.limits.maxPageSize) {
      throw new InvalidArgumentError(`page_size ${q.pageSize} is out of range 0-${this.limits.maxPageSize}`);
    }
    if (q.state !== undefined && (q.state < 0 || q.state > TxState.TX_STATE_ABORTED)) {
      throw new InvalidArgumentError(`state ${q.state} is not a TxState`);
    }
    let after = '';
    if (q.pageToken) {
      after = Buffer.from(q.pageToken, 'base64url').toString();
      if (!after.startsWith('x:'))
        throw new InvalidArgumentError('page_token is not one this coordinator issued');
      after = after.slice(2);
    }
    for (const k of ['service', 'instanceId'] as const) {
      if ((q[k] ?? '').length > MAX_ID_CHARS)
        throw new InvalidArgumentError(
          `${k === 'service' ? 'service' : 'instance_id'} is longer than ${MAX_ID_CHARS}`,
        );
    }
    const { service, instanceId } = q;
    const cutoff = this.clock.now() - (q.olderThanMs ?? 0);
    // The page's `size` smallest xids after the token, kept sorted as they are found (plus one, to know whether
    // a next page exists): no copy and sort of every live transaction per page (100,000 at the limit).
    const page: Tx[] = [];
    for (const t of this.live.values()) {
      if ((q.state && t.state !== q.state) || t.createdAtMs > cutoff || t.xid <= after) continue;
      if (service && !t.branches.some((b) => b.ref.service === service)) continue;
      if (instanceId && !t.branches.some((b) => b.ref.instanceId === instanceId)) continue;
      if (page.length > size && t.xid >= page[size].xid) continue;
      let lo = 0;
      let hi = page.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (page[mid].xid < t.xid) lo = mid + 1;
        else hi = mid;
      }
      page.splice(lo, 0, t);
      if (page.length > size + 1) page.pop();
    }
    const more = page.length > size;
    if (more) page.pop();
    return {
      transactions: page.map((t) => toTransaction(t, this.owner)),
      nextPageToken: more ? Buffer.from(`x:${page[page.length - 1].xid}`).toString('base64url') : '',
    };
  }

  /** Presumed abort: unknown ⇒ ABORT; undecided ⇒ PENDING. */
  outcome(xid: string): Outcome {
    const state = this.live.get(xid)?.state ?? this.finishedOutcome(xid)?.state;
    if (state === undefined) return Outcome.OUTCOME_ABORT;
    if (isCommit(state)) return Outcome.OUTCOME_COMMIT;
    if (state === TxState.TX_STATE_ACTIVE || state === TxState.TX_STATE_PREPARING)
      return Outcome.OUTCOME_PENDING;
    return Outcome.OUTCOME_ABORT;
  }

  finished(xid: string): Promise<void> {
    if (!this.live.has(xid)) return Promise.resolve();
    return new Promise((r) => {
      const w = this.waiters.get(xid) ?? [];
      w.push(r);
      this.waiters.set(xid, w);
    });
  }

  counts(): Record<string, number> {
    const c: Record<string, number> = {};
    for (const t of this.live.values()) c[TxState[t.state]] = (c[TxState[t.state]] ?? 0) + 1;
    return c;
  }
}
