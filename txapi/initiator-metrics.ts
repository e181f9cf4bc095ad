/**
 * Prometheus metrics of the initiating side, read from what it already counts (nothing on the transaction path):
 * `track(dmtp)` exports what a Dmtp's transactions came to (`dmtp.stats`) and how many are running; every instance
 * also exports the calls its process made in a transaction (a participant's onward calls included) that a server
 * answered without taking part (no participant middleware there: their work is outside the transaction, see
 * txClientMiddleware).
 *
 * One prom-client Registry per instance (never the global one), or an RpcMetrics' to share its endpoint. Labels:
 * the initiator name and fixed outcome names, never an xid.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import { InvalidArgumentError } from '../common';
import { ignoredCallCount } from './client-middleware';
import type { Dmtp, InitiatorStats } from './initiator';

export interface InitiatorMetricsOptions {
  /** Where the metrics go (default: a new Registry of their own; pass an RpcMetrics' to serve both together). */
  registry?: Registry;
}

const OUTCOMES = ['committed', 'aborted', 'unknown'] as const;
type Outcome = (typeof OUTCOMES)[number];
type Counts = Record<Outcome, number>;
const NONE: Counts = { committed: 0, aborted: 0, unknown: 0 };

interface Tracked {
  name: string;
  /** What of its counts is already in `retired` (tracked again after an untrack): counted once. */
  base: Counts;
}

export class InitiatorMetrics {
  readonly registry: Registry;
  private readonly tracked = new Map<Dmtp, Tracked>();
  /** The counts of a Dmtp when it was untracked, should it be tracked again. */
  private readonly untrackedAt = new WeakMap<Dmtp, Counts>();
  /** Every initiator name ever tracked: its counters go on being exported (a counter never goes back). */
  private readonly names = new Set<string>();
  /** Per name and outcome, the counts of Dmtps no longer tracked, and what the counter has already added. */
  private readonly retired = new Map<string, number>();
  private readonly added = new Map<string, number>();
  private ignoredAdded = 0;

  constructor(options: InitiatorMetricsOptions = {}) {
    this.registry = options.registry ?? new Registry();
    const registers = [this.registry];
    const sum = (name: string, outcome: Outcome) => {
      const key = `${name}\u0000${outcome}`;
      let n = this.retired.get(key) ?? 0;
      for (const [dmtp, t] of this.tracked) if (t.name === name) n += dmtp.stats[outcome] - t.base[outcome];
      const seen = this.added.get(key) ?? 0;
      this.added.set(key, Math.max(seen, n));
      return Math.max(0, n - seen);
    };
    const names = () => this.names;
    const tracked = () => this.tracked;
    new Counter({
      name: 'dmtp_initiator_transactions_total',
      help: 'Transactions begun here that ended, by initiator and outcome: committed, aborted, unknown (no answer from the coordinator: outcomeOf tells).',
      labelNames: ['initiator', 'outcome'],
      registers,
      collect() {
        for (const initiator of names())
          for (const outcome of OUTCOMES) this.inc({ initiator, outcome }, sum(initiator, outcome));
      },
    });
    new Gauge({
      name: 'dmtp_initiator_transactions_running',
      help: 'Transactions begun here and not yet ended, by initiator.',
      labelNames: ['initiator'],
      registers,
      collect() {
        this.reset();
        const running = new Map<string, number>();
        for (const [dmtp, { name }] of tracked())
          running.set(name, (running.get(name) ?? 0) + dmtp.stats.running);
        for (const [initiator, n] of running) this.set({ initiator }, n);
      },
    });
    const ignored = () => {
      const now = ignoredCallCount();
      const n = Math.max(0, now - this.ignoredAdded);
      this.ignoredAdded = Math.max(this.ignoredAdded, now);
      return n;
    };
    new Counter({
      name: 'dmtp_initiator_calls_ignored_total',
      help: 'Calls made in a transaction (by this process) that a server answered without taking part: no participant middleware there, so their work is outside the transaction.',
      registers,
      collect() {
        this.inc(ignored());
      },
    });
  }

  /**
   * Exports `dmtp`'s counts under `name` (default its `initiator` option, or 'default'); returns the undo. Counts
   * of an untracked Dmtp stay in the totals; tracked again, it adds what it counted since.
   */
  track(dmtp: Dmtp, name: string = dmtp.initiator || 'default'): () => void {
    if (typeof name !== 'string' || name.length === 0)
      throw new InvalidArgumentError('InitiatorMetrics.track: name must be a non-empty string');
    if (this.tracked.has(dmtp))
      throw new InvalidArgumentError(
        `InitiatorMetrics.track: this Dmtp is tracked already (as '${this.tracked.get(dmtp)!.name}')`,
      );
    const t: Tracked = { name, base: this.untrackedAt.get(dmtp) ?? NONE };
    this.tracked.set(dmtp, t);
    this.names.add(name);
    return () => {
      if (this.tracked.get(dmtp) !== t) return;
      this.tracked.delete(dmtp);
      const last: InitiatorStats = dmtp.stats;
      for (const outcome of OUTCOMES) {
        const key = `${name}\u0000${outcome}`;
        this.retired.set(key, (this.retired.get(key) ?? 0) + last[outcome] - t.base[outcome]);
      }
      this.untrackedAt.set(dmtp, { committed: last.committed, aborted: last.aborted, unknown: last.unknown });
    };
  }
}
