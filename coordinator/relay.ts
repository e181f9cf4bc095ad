/**
 * The outbox relay: after the commit point, publishes a transaction's staged events through the EventSink,
 * retrying with backoff for as long as the sink fails (Kafka down). The events wait in the durable COMMITTING
 * record meanwhile; the manager removes the record (forgets them) only after `deliver` resolved and every branch
 * acknowledged phase 2.
 */
import { backoffMs, logger, type BackoffOptions, type Clock, type Timer } from '../common';
import type { StagedEvent } from '../proto/gen/dmtp/v1/types';
import type { EventSink } from './event-sink';

const log = logger('coordinator:relay');

export class Relay {
  private readonly timers = new Set<Timer>();
  private stopped = false;
  /** Transactions whose events are not delivered yet (the backlog, for metrics and list). */
  backlog = 0;

  constructor(
    private readonly sink: EventSink,
    private readonly clock: Clock,
    private readonly backoff: BackoffOptions,
  ) {}

  /** Resolves once every event is published; never rejects (it retries); stays pending after stop(). */
  deliver(xid: string, events: StagedEvent[]): Promise<void> {
    this.backlog++;
    return new Promise<void>((resolve) => {
      const attempt = (n: number) => {
        if (this.stopped) return;
        this.sink.publish(xid, events).then(
          () => {
            this.backlog--;
            resolve();
          },
          (err: Error) => {
            if (this.stopped) return;
            (n % 10 === 1 ? log.warn : log.debug)('publishing staged events failed; retrying', {
              xid,
              attempt: n,
              err,
            });
            const t = this.clock.setTimeout(
              () => {
                this.timers.delete(t);
                attempt(n + 1);
              },
              backoffMs(n, this.backoff),
            );
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
