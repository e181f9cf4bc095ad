/**
 * Prometheus metrics of one coordinator, gathered without touching the protocol code: a LifecycleSink counts
 * begun/prepared/committed/aborted notices and times commits, a ParticipantGateway decorator counts phase-2
 * calls that failed (each is retried), an EventSink decorator tracks the outbox backlog, and gauges read the
 * manager's live table when scraped. The Coordinator wires them in when given `metricsPort`; a library user can
 * do the same by hand.
 *
 * One prom-client Registry per instance (never the global one), labelled `coordinator=<id>`, so several
 * coordinators in one process (tests, benchmarks) do not clash. No label is unbounded: outcomes, states and
 * phase-2 kinds are fixed sets; there is never an xid, branch or participant label.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { BranchRef, StagedEvent } from '../proto/gen/dmtp/v1/types';
import { TxState } from '../proto/gen/dmtp/v1/types';
import { METRICS_DEFAULTS } from '../rpc/metrics';
import type { EventSink, LifecycleNotice, LifecycleSink } from './event-sink';
import type { CommitResult, ParticipantGateway, PrepareResult } from './gateway';
import type { LogWriteStats, TxLog } from './log/tx-log';

export interface CoordinatorMetricsOptions {
  /** The coordinator's id, added to every series as `coordinator`. */
  coordinatorId: string;
  /** Where the metrics go (default: a new Registry of their own). */
  registry?: Registry;
  /** Buckets of the commit latency histogram, in seconds (default METRICS_DEFAULTS.latencyBucketsSeconds). */
  latencyBucketsSeconds?: number[];
}

/** What the gauges read when scraped (the TransactionManager has exactly these). */
export interface LiveTransactions {
  /** Live transactions by state name (`TX_STATE_ACTIVE`, …). */
  counts(): Record<string, number>;
  readonly inFlight: number;
  /** Operators' resolves and settles so far. */
  operatorActions?(): { resolve: number; settle: number };
}

/** A transaction log, as the log counters read it (every TxLog is one). */
export type LogStatsSource = Pick<TxLog, 'writeStats'>;

/**
 * Counts that only grow, read from sources that come and go (managers, logs): `since` gives how much one source's
 * count grew since it was last read, so a total of those growths never goes back when a source leaves.
 */
class Growth<S extends object> {
  private readonly seen = new WeakMap<S, Record<string, number>>();

  since(source: S, name: string, now: number): number {
    let counts = this.seen.get(source);
    if (!counts) this.seen.set(source, (counts = {}));
    const grown = Math.max(0, now - (counts[name] ?? 0));
    counts[name] = Math.max(now, counts[name] ?? 0);
    return grown;
  }
}

/** States whose branches may hold prepared work the coordinator has not finished telling them about. */
const IN_DOUBT = [TxState.TX_STATE_PREPARING, TxState.TX_STATE_COMMITTING, TxState.TX_STATE_ABORTING].map(
  (s) => TxState[s],
);
const STATES = [
  TxState.TX_STATE_ACTIVE,
  TxState.TX_STATE_PREPARING,
  TxState.TX_STATE_COMMITTING,
  TxState.TX_STATE_ABORTING,
];
/** `TX_STATE_ACTIVE` → `active`: label values as the CLI prints states, lower case. */
const stateLabel = (s: TxState) => TxState[s].replace(/^TX_STATE_/, '').toLowerCase();

export class CoordinatorMetrics {
  readonly registry: Registry;
  private live: () => Iterable<LiveTransactions> = () => [];
  private logs: () => Iterable<LogStatsSource> = () => [];
  /** The outbox backlog: xid → when its first publish attempt started and how many events it has. */
  private readonly outboxPending = new Map<string, { sinceMs: number; events: number }>();
  private readonly transactions: Counter<'outcome'>;
  private readonly prepared: Counter;
  private readonly commitLatency: Histogram;
  private readonly phase2Retries: Counter<'kind'>;
  private readonly published: Counter;
  private readonly publishFailures: Counter;

  constructor(options: CoordinatorMetricsOptions) {
    this.registry = options.registry ?? new Registry();
    this.registry.setDefaultLabels({ coordinator: options.coordinatorId });
    const registers = [this.registry];
    this.transactions = new Counter({
      name: 'dmtp_coordinator_transactions_total',
      help: 'Transactions by outcome: begun, committed (the commit decision), aborted (the abort decision).',
      labelNames: ['outcome'],
      registers,
    });
    for (const outcome of ['begun', 'committed', 'aborted']) this.transactions.inc({ outcome }, 0);
    this.prepared = new Counter({
      name: 'dmtp_coordinator_prepared_total',
      help: 'Two-phase transactions whose branches all voted PREPARED or READ_ONLY in phase 1.',
      registers,
    });
    this.commitLatency = new Histogram({
      name: 'dmtp_coordinator_commit_duration_seconds',
      help: 'From begin (as the coordinator saw it; with a client-minted xid, the Commit call) to the commit decision.',
      buckets: options.latencyBucketsSeconds ?? METRICS_DEFAULTS.latencyBucketsSeconds,
      registers,
    });
    this.phase2Retries = new Counter({
      name: 'dmtp_coordinator_phase2_retries_total',
      help: 'Phase-2 Commit or Rollback calls that failed and are retried with backoff, by kind.',
      labelNames: ['kind'],
      registers,
    });
    for (const kind of ['commit', 'rollback']) this.phase2Retries.inc({ kind }, 0);
    this.published = new Counter({
      name: 'dmtp_coordinator_outbox_published_total',
      help: 'Committed transactions whose staged events the outbox relay published.',
      registers,
    });
    this.publishFailures = new Counter({
      name: 'dmtp_coordinator_outbox_publish_failures_total',
      help: 'Failed attempts to publish a transaction’s staged events (retried with backoff).',
      registers,
    });
    const pending = this.outboxPending;
    new Gauge({
      name: 'dmtp_coordinator_outbox_backlog',
      help: 'Committed transactions whose staged events are not published yet (Kafka slow or down).',
      registers,
      collect() {
        this.set(pending.size);
      },
    });
    new Gauge({
      name: 'dmtp_coordinator_outbox_backlog_events',
      help: 'Staged events of the transactions in the outbox backlog.',
      registers,
      collect() {
        let n = 0;
        for (const p of pending.values()) n += p.events;
        this.set(n);
      },
    });
    new Gauge({
      name: 'dmtp_coordinator_outbox_oldest_seconds',
      help: 'Age of the oldest transaction in the outbox backlog (0 when empty).',
      registers,
      collect() {
        let oldest = Infinity;
        for (const p of pending.values()) oldest = Math.min(oldest, p.sinceMs);
        this.set(oldest === Infinity ? 0 : Math.max(0, Date.now() - oldest) / 1000);
      },
    });
    const live = () => [...this.live()];
    const counts = () => {
      const c: Record<string, number> = {};
      for (const l of live()) for (const [k, n] of Object.entries(l.counts())) c[k] = (c[k] ?? 0) + n;
      return c;
    };
    // Operators' actions and log writes, read from each manager and log when scraped: what is new since its last
    // scrape is added, so a taken-over owner's manager or log retired meanwhile takes nothing back from the total.
    const actions = new Growth<LiveTransactions>();
    new Counter({
      name: 'dmtp_coordinator_operator_actions_total',
      help: 'Operator actions: transactions decided by tx resolve, branches settled by tx settle.',
      labelNames: ['action'],
      registers,
      collect() {
        for (const action of ['resolve', 'settle'] as const) this.inc({ action }, 0);
        for (const l of live()) {
          const now = l.operatorActions?.();
          if (!now) continue;
          for (const action of ['resolve', 'settle'] as const) {
            this.inc({ action }, actions.since(l, action, now[action]));
          }
        }
      },
    });
    const writes = new Growth<LogStatsSource>();
    const logTotal = (name: string, help: string, field: keyof LogWriteStats) => {
      const logs = () => this.logs();
      new Counter({
        name,
        help,
        registers,
        collect() {
          for (const log of logs()) {
            const now = log.writeStats?.();
            if (now) this.inc(writes.since(log, field, now[field]));
          }
        },
      });
    };
    logTotal(
      'dmtp_coordinator_log_writes_total',
      'Transaction log writes (records written, removed or finished).',
      'writes',
    );
    logTotal(
      'dmtp_coordinator_log_batches_total',
      'Durable log writes that carried them (etcd txns, fsynced groups): writes ÷ batches is the group-commit factor.',
      'batches',
    );
    new Gauge({
      name: 'dmtp_coordinator_in_flight',
      help: 'Transactions the coordinator holds: not finished (phase 2 and events not all done).',
      registers,
      collect() {
        this.set(live().reduce((n, l) => n + l.inFlight, 0));
      },
    });
    new Gauge({
      name: 'dmtp_coordinator_in_doubt',
      help: 'Transactions past ACTIVE whose branches have not all acknowledged (PREPARING, COMMITTING, ABORTING).',
      registers,
      collect() {
        const c = counts();
        this.set(IN_DOUBT.reduce((n, s) => n + (c[s] ?? 0), 0));
      },
    });
    new Gauge({
      name: 'dmtp_coordinator_transactions',
      help: 'Live transactions by state.',
      labelNames: ['state'],
      registers,
      collect() {
        const c = counts();
        for (const s of STATES) this.set({ state: stateLabel(s) }, c[TxState[s]] ?? 0);
      },
    });
  }

  /**
   * What the gauges read when scraped: the TransactionManager, or a function giving every manager the
   * coordinator runs (its own and those of owners it took over, with HA); the gauges sum them.
   */
  observe(live: LiveTransactions | (() => Iterable<LiveTransactions>)): void {
    this.live = typeof live === 'function' ? live : () => [live];
  }

  /**
   * The transaction logs whose writes the log counters total (the coordinator's own, and taken-over ones). Each
   * log's growth since the previous scrape is added, so a log that leaves the list keeps what it counted.
   */
  observeLogs(logs: () => Iterable<LogStatsSource>): void {
    this.logs = logs;
  }

  /** A LifecycleSink that counts and times each notice, then hands it to `next` (if any). */
  lifecycleSink(next?: LifecycleSink): LifecycleSink {
    return {
      notify: (n: LifecycleNotice) => {
        this.count(n);
        next?.notify(n);
      },
    };
  }

  /** The gateway, counting the phase-2 calls that fail (the manager retries each of them). */
  gateway(inner: ParticipantGateway): ParticipantGateway {
    const retried = (kind: 'commit' | 'rollback') => (err: unknown) => {
      this.phase2Retries.inc({ kind });
      throw err;
    };
    return {
      prepare: (branch: BranchRef, xid: string, timeoutMs: number): Promise<PrepareResult> =>
        inner.prepare(branch, xid, timeoutMs),
      commit: (
        branch: BranchRef,
        xid: string,
        onePhase: boolean,
        timeoutMs: number,
      ): Promise<CommitResult> => {
        const call = inner.commit(branch, xid, onePhase, timeoutMs);
        return onePhase ? call : call.catch(retried('commit'));
      },
      rollback: (branch: BranchRef, xid: string, reason: string, timeoutMs: number): Promise<void> =>
        inner.rollback(branch, xid, reason, timeoutMs).catch(retried('rollback')),
      close: () => inner.close(),
    };
  }

  /** The event sink, tracking which transactions' events wait to be published (the outbox backlog). */
  eventSink(inner: EventSink): EventSink {
    return {
      publish: async (xid: string, events: StagedEvent[]) => {
        if (!this.outboxPending.has(xid))
          this.outboxPending.set(xid, { sinceMs: Date.now(), events: events.length });
        try {
          await inner.publish(xid, events);
        } catch (err) {
          this.publishFailures.inc();
          throw err;
        }
        this.outboxPending.delete(xid);
        this.published.inc();
      },
    };
  }

  /** The Prometheus text exposition (what `/metrics` answers). */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  private count(n: LifecycleNotice): void {
    switch (n.kind) {
      case 'begun':
      case 'aborted':
        this.transactions.inc({ outcome: n.kind });
        break;
      case 'prepared':
        this.prepared.inc();
        break;
      case 'committed':
        this.transactions.inc({ outcome: 'committed' });
        this.commitLatency.observe(Math.max(0, n.elapsedMs) / 1000);
        break;
    }
  }
}
