/**
 * Checks made before anything is sent, so bad input is a typed error at publish (or staging) time and never a
 * stuck relay or a half-sent batch. Pure functions: the producer calls them, and txapi can call them when an
 * event is staged in a transaction.
 */
import { EventTooLargeError, InvalidTopicError } from './errors';

/** Kafka's own limit on topic names (kafka.common.internals.Topic.MAX_NAME_LENGTH). */
export const MAX_TOPIC_LENGTH = 249;
const TOPIC_RE = /^[a-zA-Z0-9._-]+$/;

/** Throws InvalidTopicError unless Kafka would accept `topic` as a topic name. */
export function validateTopic(topic: unknown): asserts topic is string {
  const name = typeof topic === 'string' ? topic : String(topic);
  const shown = name.slice(0, 80);
  let why: string | undefined;
  if (typeof topic !== 'string' || topic.length === 0) why = 'it is empty';
  else if (topic === '.' || topic === '..') why = "'.' and '..' are reserved";
  else if (topic.length > MAX_TOPIC_LENGTH) why = `it is longer than ${MAX_TOPIC_LENGTH} characters`;
  else if (!TOPIC_RE.test(topic)) why = 'only [a-zA-Z0-9._-] are legal';
  if (why)
    throw new InvalidTopicError(`illegal topic name '${shown}': ${why}`, { details: { topic: shown } });
}

/** A header's value as a Kafka record carries it: text or bytes, an array for a header repeated in the record. */
export type HeaderValue = string | Buffer | (string | Buffer)[];

/** What an event costs on the wire, roughly as Kafka counts it: key, value and every header key and value. */
export function eventBytes(
  key: Buffer | null | undefined,
  value: Buffer | null | undefined,
  headers: Record<string, HeaderValue | undefined> | undefined,
): number {
  let n = (key?.length ?? 0) + (value?.length ?? 0);
  if (headers) {
    for (const k in headers) {
      const v = headers[k];
      if (Array.isArray(v)) {
        // A repeated header is one key and value per occurrence.
        for (const one of v) n += Buffer.byteLength(k) + valueBytes(one);
      } else {
        n += Buffer.byteLength(k) + (v === undefined ? 0 : valueBytes(v));
      }
    }
  }
  return n;
}

function valueBytes(v: string | Buffer): number {
  return typeof v === 'string' ? Buffer.byteLength(v) : v.length;
}

/** Throws EventTooLargeError when the event is larger than `maxEventBytes`. */
export function validateSize(topic: string, bytes: number, maxEventBytes: number, id?: string): void {
  if (bytes > maxEventBytes) {
    throw new EventTooLargeError(
      `event for '${topic}' is ${bytes} bytes, more than the limit of ${maxEventBytes} bytes`,
      { details: { topic, bytes, maxEventBytes, id } },
    );
  }
}
