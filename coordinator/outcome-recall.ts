/**
 * What a manager knows of transactions that are no longer live in it: the outcomes it remembers in memory
 * (TxTable), and the committed markers in the log for those it forgot (finished before a restart, a takeover or
 * a hand-back). Presumed abort: no marker ⇒ nothing committed.
 */
import { parseXid, UnavailableError, type Clock } from '../common';
import { TxState } from '../proto/gen/dmtp/v1/types';
import type { TxLog } from './log/tx-log';
import type { Remembered, TxTable } from './tx-table';

/**
 * A Commit/Rollback for an xid not in memory reads the log's committed marker only when the xid may have
 * finished unseen or been forgotten — minted before this manager started, or no later than the newest outcome
 * dropped from memory (with this much client clock skew allowed) — and the request is a retry: a fresh
 * first-attempt Commit, the hot path, costs no log read.
 */
const FORGOTTEN_SKEW_MS = 60_000;

export class OutcomeRecall {
  private readonly startedAtMs: number;

  constructor(
    private readonly table: TxTable,
    private readonly txLog: TxLog,
    clock: Clock,
    /** HA: the manager runs a failed coordinator's transactions, any of which may have finished unseen. */
    private readonly takenOver: boolean,
  ) {
    this.startedAtMs = clock.now();
  }

  /**
   * The outcome of a finished transaction a Commit/Rollback names, if known: remembered, or (for a retry of an
   * xid that may have finished before this manager started) from its committed marker. A log that cannot be
   * read leaves it unknown (the request then runs as a fresh one). A first attempt reads nothing: no decision
   * can exist for it yet.
   */
  async ofRequest(xid: string, firstAttempt = false): Promise<Remembered | undefined> {
    const done = this.table.finishedOutcome(xid);
    if (done || firstAttempt || !this.mayBeForgotten(xid)) return done;
    // UNAVAILABLE when the log cannot be read: run as a fresh one, a retry of a committed transaction would
    // prepare branches that already committed and answer ABORTED.
    return this.fromLog(xid);
  }

  /**
   * For queries (QueryOutcome, Get): an xid neither live nor remembered has its committed marker read (and
   * remembered). UNAVAILABLE when the log cannot be read.
   */
  async load(xid: string): Promise<void> {
    if (!this.table.find(xid) && !this.table.finishedOutcome(xid)) await this.fromLog(xid);
  }

  /** Minted before this manager started (by the minting clock): an earlier process may have answered for it. */
  mintedBeforeStart(xid: string): boolean {
    return parseXid(xid).createdAtMs < this.startedAtMs;
  }

  /** Not in memory, and minted before this manager started (or taken over): it may have finished unseen. */
  private mayBeForgotten(xid: string): boolean {
    if (this.table.find(xid)) return false;
    const minted = parseXid(xid).createdAtMs;
    return (
      this.takenOver ||
      minted < this.startedAtMs + FORGOTTEN_SKEW_MS ||
      minted <= this.table.forgottenMintedUpToMs + FORGOTTEN_SKEW_MS
    );
  }

  /** Reads the committed marker of an xid not in memory and remembers what it says. */
  private async fromLog(xid: string): Promise<Remembered | undefined> {
    let marker;
    try {
      marker = await this.txLog.committedMarker(xid);
    } catch (err) {
      throw new UnavailableError(`transaction ${xid}: its outcome cannot be read from the log`, {
        cause: err,
        details: { xid },
      });
    }
    // No marker: what memory holds now — a presumed abort answered while the log was read — else nothing.
    if (!marker) return this.table.finishedOutcome(xid);
    const r = { state: TxState.TX_STATE_COMMITTED, abortReason: '', decidedAtMs: marker.decidedAtMs };
    this.table.remember(xid, r);
    return this.table.finishedOutcome(xid) ?? r;
  }
}
