/**
 * Where the outbox relay sends a committed transaction's staged events (Kafka in production, through the sink
 * that `events/` provides) and where lifecycle notifications go. Both are interfaces so the coordinator does
 * not depend on Kafka; `MemoryEventSink` and `MemoryLifecycleSink` serve tests.
 */
import type { StagedEvent } from '../proto/gen/dmtp/v1/types';

export interface EventSink {
  /**
   * Publishes every event of one committed transaction. Resolves only when all of them are durably accepted
   * (acks=all); a rejection makes the relay retry the whole set later (events carry stable ids
   * `<xid>:<sequence>`, so redelivery is harmless to a deduplicating consumer).
   */
  publish(xid: string, events: StagedEvent[]): Promise<void>;
}

export type LifecycleKind = 'begun' | 'prepared' | 'committed' | 'aborted';

export interface LifecycleNotice {
  kind: LifecycleKind;
  xid: string;
  /** Coordinator id that owns the transaction. */
  owner: string;
  atMs: number;
  /** Since the transaction began (as the coordinator saw it). */
  elapsedMs: number;
  branches: number;
  /** For 'aborted'. */
  reason?: string;
}

/** Lifecycle notifications are best effort: a sink must not throw, and the manager never waits for it. */
export interface LifecycleSink {
  notify(notice: LifecycleNotice): void;
}

/** Records what it is given; `failing` makes publish reject (Kafka down). For tests. */
export class MemoryEventSink implements EventSink {
  readonly published: { xid: string; events: StagedEvent[] }[] = [];
  failing = false;
  attempts = 0;

  async publish(xid: string, events: StagedEvent[]): Promise<void> {
    this.attempts++;
    if (this.failing) throw new Error('memory event sink is failing (simulated broker outage)');
    this.published.push({ xid, events });
  }
}

export class MemoryLifecycleSink implements LifecycleSink {
  readonly notices: LifecycleNotice[] = [];
  notify(notice: LifecycleNotice): void {
    this.notices.push(notice);
  }
}
