/**
 * The outbox relay: after the commit point, publishes a transaction's staged events through the EventSink,
 * retrying with backoff for as long as the sink fails (Kafka down). The events wait in the durable COMMITTING
 * record meanwhile; the manager removes the record (forgets them) only after `deliver` resolved and every branch
 * acknowledged phase 2.
 */
import { backoffMs, logger, type BackoffOptions, type Clock, type Timer } from '../common';
import type { StagedEvent } from '../proto/gen/dmtp/v1/types';
import type { EventSink } from './event-sink';
import { boundedReason } from './tx';

const log = logger('coordinator:relay');

/** What the relay has done and what waits (for metrics: `manager.relayStats()`). */
export interface RelayStats {
  /** Committed transactions whose events are not all published yet (the outbox backlog). */
  backlogTransactions: number;
  /** Events of those transactions. */
  backlogEvents: number;
  /** Age of the oldest transaction in the backlog, ms (0 when empty). */
  oldestBacklogMs: number;
  /** Transactions / events published since start. */
  deliveredTransactions: number;
  deliveredEvents: number;
  /** Publish attempts that failed and were retried (Kafka unavailable). */
  failedAttempts: number;
}

/** How one transaction's events fare while they wait (`tx show`). */
export interface DeliveryProgress {
  /** When its delivery started. */
  readonly sinceMs: number;
  readonly events: number;
  /** Attempts that failed so far. */
  attempts: number;
  /** The last failure, naming the topic (empty once delivered). */
  lastError: string;
  /** When the next attempt is due (0: none waiting — one under way, or delivered). */
  nextRetryAtMs: number;
}

export class Relay {
  private readonly timers = new Set<Timer>();
  private stopped = false;
  /** Backlog: xid → how its delivery fares. */
  private readonly pending = new Map<string, DeliveryProgress>();
  private deliveredTransactions = 0;
  private deliveredEvents = 0;
  private failedAttempts = 0;

  constructor(
    private readonly sink: EventSink,
    private readonly clock: Clock,
    private readonly backoff: BackoffOptions,
  ) {}

  /** Transactions whose events are not delivered yet (the backlog, for metrics and list). */
  get backlog(): number {
    return this.pending.size;
  }

  get stats(): RelayStats {
    let backlogEvents = 0;
    let oldest = Infinity;
    for (const p of this.pending.values()) {
      backlogEvents += p.events;
      oldest = Math.min(oldest, p.sinceMs);
    }
    return {
      backlogTransactions: this.pending.size,
      backlogEvents,
      oldestBacklogMs: this.pending.size ? Math.max(0, this.clock.now() - oldest) : 0,
      deliveredTransactions: this.deliveredTransactions,
      deliveredEvents: this.deliveredEvents,
      failedAttempts: this.failedAttempts,
    };
  }

  /** How the delivery of a transaction's events fares, while it is under way. */
  progress(xid: string): Readonly<DeliveryProgress> | undefined {
    return this.pending.get(xid);
  }

  /** Resolves once every event is published; never rejects (it retries); stays pending after stop(). */
  deliver(xid: string, events: StagedEvent[]): Promise<void> {
    const progress: DeliveryProgress = {
      sinceMs: this.clock.now(),
      events: events.length,
      attempts: 0,
      lastError: '',
      nextRetryAtMs: 0,
    };
    this.pending.set(xid, progress);
    return new Promise<void>((resolve) => {
      const attempt = (n: number) => {
        if (this.stopped) return;
        // A sink that throws instead of rejecting is retried all the same.
        Promise.resolve()
          .then(() => this.sink.publish(xid, events))
          .then(
            () => {
              this.pending.delete(xid);
              progress.lastError = '';
              progress.nextRetryAtMs = 0;
              this.deliveredTransactions++;
              this.deliveredEvents += events.length;
              resolve();
            },
            (err: Error) => {
              if (this.stopped) return;
              this.failedAttempts++;
              (n % 10 === 1 ? log.warn : log.debug)('publishing staged events failed; retrying', {
                xid,
                attempt: n,
                err,
              });
              const delay = backoffMs(n, this.backoff);
              progress.attempts = n;
              progress.lastError = boundedReason(err instanceof Error ? err.message : String(err));
              progress.nextRetryAtMs = this.clock.now() + delay;
              const t = this.clock.setTimeout(() => {
                this.timers.delete(t);
                progress.nextRetryAtMs = 0;
                attempt(n + 1);
              }, delay);
              this.timers.add(t);
            },
          );
      };
      attempt(1);
    });
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers) t.cancel();
    this.timers.clear();
  }
}
