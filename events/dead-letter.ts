/**
 * The dead-letter record: the original key, value and headers, plus DMTP headers saying where the event came
 * from and why it was given up on. Written by a subscription after the last retry, or instead of the handler
 * for an event older than `maxAgeMs`.
 */
import { describeValue } from '../common';
import { HEADERS, REDRIVE_HEADERS } from './envelope';
import type { ReceivedEvent } from './received-event';
import { eventBytes, type HeaderValue } from './validation';

export const DEAD_LETTER_HEADERS = {
  /** Why: the handler's last error (`<name>: <message>`), or `expired: …`. */
  reason: 'dmtp-dlq-reason',
  /** `handler-failed` or `expired`. */
  kind: 'dmtp-dlq-kind',
  topic: 'dmtp-dlq-topic',
  partition: 'dmtp-dlq-partition',
  offset: 'dmtp-dlq-offset',
  /** Consumer group that gave up. */
  group: 'dmtp-dlq-group',
  /** Handler attempts made (0 for an expired event). */
  attempts: 'dmtp-dlq-attempts',
  /** When it was dead-lettered, ms since the Unix epoch. */
  failedAtMs: 'dmtp-dlq-failed-at-ms',
  /**
   * Set (to the original value's size in bytes) when the copy carries no value: with the dead-letter headers
   * the event was too large to write. The original stays at topic/partition/offset while the topic keeps it.
   */
  valueOmitted: 'dmtp-dlq-value-omitted',
  /**
   * Set (to the original headers' size in bytes) when even without its value the copy was too large: it then
   * carries only the dead-letter headers and `dmtp-event-id` (if short), and its key's first bytes.
   */
  headersOmitted: 'dmtp-dlq-headers-omitted',
  /** Set (to the original key's size in bytes) when the copy carries only the key's first bytes. */
  keyTruncated: 'dmtp-dlq-key-truncated',
} as const;

export interface DeadLetterRecord {
  key: Buffer | null;
  value: Buffer | null;
  /** The original headers as they came (bytes, repeated ones as arrays), then the dead-letter ones (text). */
  headers: Record<string, HeaderValue>;
}

export type DeadLetterKind = 'handler-failed' | 'expired';

/** The default dead-letter topic of `topic`. */
export function defaultDeadLetterTopic(topic: string): string {
  return `${topic}.dlq`;
}

const MAX_REASON_CHARS = 1_000;

export function describeError(err: unknown): string {
  const text = err instanceof Error ? `${err.name}: ${err.message}` : describeValue(err);
  return text.length > MAX_REASON_CHARS ? text.slice(0, MAX_REASON_CHARS) + '…' : text;
}

export function deadLetterMessage(
  event: ReceivedEvent,
  kind: DeadLetterKind,
  reason: string,
  group: string,
  attempts: number,
  now = Date.now(),
): DeadLetterRecord {
  return {
    key: event.key,
    value: event.raw,
    headers: {
      ...originalHeaders(event),
      [DEAD_LETTER_HEADERS.reason]: reason,
      [DEAD_LETTER_HEADERS.kind]: kind,
      [DEAD_LETTER_HEADERS.topic]: event.topic,
      [DEAD_LETTER_HEADERS.partition]: String(event.partition),
      [DEAD_LETTER_HEADERS.offset]: event.offset,
      [DEAD_LETTER_HEADERS.group]: group,
      [DEAD_LETTER_HEADERS.attempts]: String(attempts),
      [DEAD_LETTER_HEADERS.failedAtMs]: String(now),
    },
  };
}

/** A header's value as kafkajs decodes it: null for a header without value (outside kafkajs' types). */
type RawHeader = string | Buffer | null | undefined | (string | Buffer | null)[];

/**
 * The record's own headers as it carried them: bytes not re-encoded as text, every value of a repeated header.
 * A header without value (null) is left out: kafkajs cannot write one.
 */
function originalHeaders(event: ReceivedEvent): Record<string, HeaderValue> {
  const out: Record<string, HeaderValue> = {};
  const h = (event.message.headers ?? {}) as Record<string, RawHeader>;
  for (const k of Object.keys(h)) {
    // Addressed the redriven copy to this group; a reader of the dead-letter topic is another group.
    if (k === REDRIVE_HEADERS.group) continue;
    const v = h[k];
    if (Array.isArray(v)) {
      const kept = v.filter((one): one is string | Buffer => one !== null && one !== undefined);
      if (kept.length > 0) out[k] = kept;
    } else if (v !== null && v !== undefined) {
      out[k] = v;
    }
  }
  return out;
}

/** The same record without its value (and with a short reason), for a copy too large to write. */
export function withoutValue(record: DeadLetterRecord): DeadLetterRecord {
  const r = record.headers[DEAD_LETTER_HEADERS.reason];
  const reason = typeof r === 'string' ? r : '';
  return {
    key: record.key,
    value: null,
    headers: {
      ...record.headers,
      [DEAD_LETTER_HEADERS.reason]: reason.length > 200 ? reason.slice(0, 200) + '…' : reason,
      [DEAD_LETTER_HEADERS.valueOmitted]: String(record.value?.length ?? 0),
    },
  };
}

/** The most a stub copy keeps of the key, and the longest event id it keeps: it must fit whatever came in. */
const STUB_MAX_KEY_BYTES = 1_024;
const STUB_MAX_ID_BYTES = 1_024;

const DLQ_HEADER_NAMES: ReadonlySet<string> = new Set(Object.values(DEAD_LETTER_HEADERS));

/**
 * The last resort for a copy too large even without its value (huge application headers or key): only the
 * dead-letter headers, the event id and the key's first bytes, so that it fits. The original stays at the
 * topic/partition/offset the headers name.
 */
export function headersOmitted(record: DeadLetterRecord): DeadLetterRecord {
  const headers: Record<string, HeaderValue> = {};
  let omitted = 0;
  for (const [k, v] of Object.entries(record.headers)) {
    const bytes = eventBytes(null, null, { [k]: v });
    const keep = DLQ_HEADER_NAMES.has(k) || (k === HEADERS.id && bytes <= STUB_MAX_ID_BYTES);
    if (keep) headers[k] = v;
    else omitted += bytes;
  }
  headers[DEAD_LETTER_HEADERS.headersOmitted] = String(omitted);
  let key = record.key;
  if (key && key.length > STUB_MAX_KEY_BYTES) {
    headers[DEAD_LETTER_HEADERS.keyTruncated] = String(key.length);
    key = key.subarray(0, STUB_MAX_KEY_BYTES);
  }
  return { key, value: null, headers };
}
