/**
 * An EventSink that appends one JSON line per event to a file (fsync'd before publish resolves). For fault
 * tests and local runs without Kafka: `DMTP_EVENT_SINK=file:/path` in main.ts. Not a production sink.
 */
import { open } from 'node:fs/promises';
import type { StagedEvent } from '../proto/gen/dmtp/v1/types';
import type { EventSink } from './event-sink';

export class FileEventSink implements EventSink {
  constructor(private readonly path: string) {}

  async publish(xid: string, events: StagedEvent[]): Promise<void> {
    const lines = events
      .map((e) =>
        JSON.stringify({
          id: `${xid}:${e.sequence}`,
          xid,
          topic: e.topic,
          value: Buffer.from(e.value).toString(),
        }),
      )
      .join('\n');
    const f = await open(this.path, 'a');
    try {
      await f.write(lines + '\n');
      await f.sync();
    } finally {
      await f.close();
    }
  }
}
