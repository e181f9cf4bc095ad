/**
 * The Kafka-backed sinks, over the shared producer of `events/` (idempotent, acks=all, key-ordered, every
 * staged event with its stable id `<xid>:<sequence>` and the xid in headers).
 *
 * KafkaEventSink.publish rejects while any event failed retriably (Kafka unavailable), so the relay retries
 * the transaction's events — all of them: the ones already sent arrive again with the same ids, which
 * consumers drop. An event Kafka can never take (invalid topic, too large) fails permanently: it is logged and
 * counted, not retried for ever, so one bad event cannot stall the relay.
 */
import { logger, UnavailableError } from '../common';
import { EventProducer, type ProducerOptions } from '../events';
import type { StagedEvent } from '../proto/gen/dmtp/v1/types';
import type { EventSink, LifecycleNotice, LifecycleSink } from './event-sink';

const log = logger('coordinator:kafka-sink');

export class KafkaEventSink implements EventSink {
  /** Events that failed permanently (never published). */
  undeliverable = 0;

  constructor(private readonly producer: EventProducer) {}

  async publish(xid: string, events: StagedEvent[]): Promise<void> {
    const reports = await this.producer.publishStaged(xid, events);
    const retry = reports.find((r) => r.status === 'failed' && r.retriable);
    if (retry && retry.status === 'failed') {
      // Topic first: the relay keeps the message as the transaction's last error (`tx show`; `tx list` cuts it).
      const waiting = reports.filter((r) => r.status === 'failed' && r.retriable).length;
      throw new UnavailableError(
        `topic ${retry.topic}: ${retry.reason}, ${waiting} of ${reports.length} events not published: ${retry.error.message}`,
        { details: { xid, topic: retry.topic, reason: retry.reason }, cause: retry.error },
      );
    }
    for (const r of reports) {
      if (r.status === 'failed') {
        this.undeliverable++;
        log.error('staged event can never be published; dropped', {
          xid,
          id: r.id,
          topic: r.topic,
          reason: r.reason,
        });
      }
    }
  }
}

/**
 * Lifecycle notices as JSON events on one topic, keyed by xid; best effort (failures are counted and logged, at
 * most one line per 10 s: with the topic missing every notice fails, 2–3 per transaction). At most `maxPending`
 * wait for Kafka at once: while Kafka is down or slow, later notices are dropped and counted (`dropped`) instead
 * of piling up in memory and ahead of the relay's staged events.
 */
export class KafkaLifecycleSink implements LifecycleSink {
  /** Notices dropped because `maxPending` were already waiting. */
  dropped = 0;
  /** Notices Kafka did not take (unavailable, the topic missing). */
  unpublished = 0;
  private pending = 0;
  private warnedAtMs = -Infinity;
  private unpublishedSinceWarning = 0;

  constructor(
    private readonly producer: EventProducer,
    private readonly topic: string,
    private readonly maxPending = 10_000,
  ) {}

  notify(n: LifecycleNotice): void {
    if (this.pending >= this.maxPending) {
      if (this.dropped++ % 10_000 === 0) {
        log.warn('lifecycle notices dropped: Kafka is not keeping up', {
          pending: this.pending,
          dropped: this.dropped,
        });
      }
      return;
    }
    this.pending++;
    this.producer
      .publish(this.topic, { key: n.xid, value: n, headers: { type: `transaction.${n.kind}` } })
      .then(
        (r) =>
          r.status === 'failed' && this.notPublished({ xid: n.xid, reason: r.reason, err: r.error.message }),
        (err) => this.notPublished({ xid: n.xid, err: err as Error }),
      )
      .finally(() => this.pending--);
  }

  private notPublished(fields: Record<string, unknown>): void {
    this.unpublished++;
    this.unpublishedSinceWarning++;
    const now = Date.now();
    if (now - this.warnedAtMs < WARN_EVERY_MS) return;
    log.warn('lifecycle events not published', {
      topic: this.topic,
      ...fields,
      notPublished: this.unpublishedSinceWarning,
    });
    this.warnedAtMs = now;
    this.unpublishedSinceWarning = 0;
  }
}

/** At most one line about unpublished lifecycle notices per this long (the count since the last one in it). */
const WARN_EVERY_MS = 10_000;

export function createKafkaProducer(options: ProducerOptions): EventProducer {
  return new EventProducer({ clientId: 'dmtp-coordinator', ...options });
}
