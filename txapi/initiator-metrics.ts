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
import { CounterTotals, InvalidArgumentError } from '../common';
import { ignoredCallCount } from './client-middleware';
import type { Dmtp, InitiatorStats } from './initiator';

export interface InitiatorMetricsOptions {
  /** Where the metrics go (default: a new Registry of their own; pass an RpcMetrics' to serve both together). */
  registry?: Registry;
}

const OUTCOMES = ['committed', 'aborted', 'unknown'] as const;

export class InitiatorMetrics {
  readonly registry: Registry;
  /** The tracked Dmtps' outcome counts, by initiator name. */
  private readonly totals = new CounterTotals<Dmtp>(
    OUTCOMES,
    (dmtp, outcome) => dmtp.stats[outcome as keyof InitiatorStats],
  );
  private ignoredAdded = 0;

  constructor(options: InitiatorMetricsOptions = {}) {
    this.registry = options.registry ?? new Registry();
    const registers = [this.registry];
    const totals = this.totals;
    new Counter({
      name: 'dmtp_initiator_transactions_total',
      help: 'Transactions begun here that ended, by initiator and outcome: committed, aborted, unknown (no answer from the coordinator: outcomeOf tells).',
      labelNames: ['initiator', 'outcome'],
      registers,
      collect() {
        for (const initiator of totals.labels)
          for (const outcome of OUTCOMES)
            this.inc({ initiator, outcome }, totals.increment(initiator, outcome));
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
        for (const [dmtp, name] of totals.entries())
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
    const already = this.totals.labelOf(dmtp);
    if (already !== undefined)
      throw new InvalidArgumentError(
        `InitiatorMetrics.track: this Dmtp is tracked already (as '${already}')`,
      );
    return this.totals.track(dmtp, name);
  }
}
