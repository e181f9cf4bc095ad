/**
 * The event envelope: what DMTP adds to every Kafka record, and how values are encoded.
 *
 * Every event carries a stable id in `dmtp-event-id`: `<xid>:<sequence>` for an event staged in a transaction
 * (so a redelivery, or a second publish by a recovering relay, has the same id and a consumer can drop it), a
 * random UUID for a plain event. Transactional events also carry `dmtp-xid`. Values are JSON unless they are
 * bytes (Buffer / Uint8Array), which pass through untouched; `dmtp-content-type` says which.
 */
import { randomUUID } from 'node:crypto';
import { MD } from '../common';
import type { StagedEvent } from '../proto/gen/dmtp/v1/types';
import { NotSerialisableError } from './errors';
import { eventBytes, validateSize, validateTopic } from './validation';

/** Header names DMTP writes on every event. Reserved: they override an application header of the same name. */
export const HEADERS = {
  /** Stable event id: `<xid>:<sequence>` for transactional events, a random UUID for plain ones. */
  id: 'dmtp-event-id',
  /** The transaction that published the event (transactional events only). */
  xid: MD.xid,
  /** When the event was handed to Kafka, ms since the Unix epoch (decimal text); `maxAgeMs` counts from it. */
  publishedAtMs: 'dmtp-published-at-ms',
  /** How the value is encoded: one of CONTENT_TYPES (absent: raw bytes). */
  contentType: 'dmtp-content-type',
} as const;

/** Header names a redriven dead-letter copy carries besides the event's own (redrive.ts). */
export const REDRIVE_HEADERS = {
  /** Only this consumer group handles the copy; other DMTP groups pass over it (counted as filtered). */
  group: 'dmtp-redrive-group',
  /** The dead-letter copy it was sent from: `<topic>/<partition>/<offset>`. */
  from: 'dmtp-redriven-from',
} as const;

export const CONTENT_TYPES = {
  json: 'application/json',
  bytes: 'application/octet-stream',
} as const;

/** What an application publishes. */
export interface EventInput {
  /** Partitioning key: events with the same key land in the same partition, in publish order. */
  key?: string | Buffer | null;
  /** JSON-serialisable value, or bytes (Buffer / Uint8Array) sent as they are. */
  value: unknown;
  /** Application headers (e.g. `{ type: 'OrderPlaced' }`), filterable by subscribers. */
  headers?: Record<string, string>;
  /** An id of the caller's choosing instead of a random one (e.g. to make a retried publish droppable). */
  id?: string;
}

/** The stable id of the `sequence`-th event staged by transaction `xid`. */
export function stagedEventId(xid: string, sequence: number): string {
  return `${xid}:${sequence}`;
}

/** A fresh id for a plain (non-transactional) event. */
export function randomEventId(): string {
  return randomUUID();
}

export interface EncodedValue {
  bytes: Buffer;
  contentType: string;
}

/** Encodes a value: bytes pass through, anything else becomes JSON; throws NotSerialisableError if it cannot. */
export function encodeValue(value: unknown): EncodedValue {
  if (Buffer.isBuffer(value)) return { bytes: value, contentType: CONTENT_TYPES.bytes };
  if (value instanceof Uint8Array) {
    return {
      bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength),
      contentType: CONTENT_TYPES.bytes,
    };
  }
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (err) {
    // BigInt ("Do not know how to serialize a BigInt"), circular structures, a throwing toJSON.
    throw new NotSerialisableError(`event value is not JSON-serialisable: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (text === undefined) {
    throw new NotSerialisableError(`event value is not JSON-serialisable: ${typeof value} has no JSON form`);
  }
  return { bytes: Buffer.from(text), contentType: CONTENT_TYPES.json };
}

/** Decodes a value by its content type: JSON is parsed; anything else (or no content type) stays bytes. */
export function decodeValue(bytes: Buffer | null, contentType: string | undefined): unknown {
  if (bytes === null) return null;
  if (contentType === CONTENT_TYPES.json) return JSON.parse(bytes.toString('utf8'));
  return bytes;
}

/** A key as Kafka carries it: text or bytes; anything else is NotSerialisableError. */
export function encodeKey(key: unknown): Buffer | null {
  if (key === null || key === undefined) return null;
  if (typeof key === 'string') return Buffer.from(key);
  if (Buffer.isBuffer(key)) return key;
  if (key instanceof Uint8Array) return Buffer.from(key.buffer, key.byteOffset, key.byteLength);
  throw new NotSerialisableError(`event key must be a string or bytes, not ${typeof key}`);
}

/** Application headers must be text (Kafka carries bytes; DMTP keeps them readable for filters). */
export function checkHeaders(headers: unknown): Record<string, string> {
  if (headers === undefined || headers === null) return {};
  if (typeof headers !== 'object' || Array.isArray(headers)) {
    throw new NotSerialisableError('event headers must be an object of strings');
  }
  for (const [k, v] of Object.entries(headers)) {
    if (typeof v !== 'string')
      throw new NotSerialisableError(`event header '${k}' must be a string, not ${typeof v}`);
  }
  return headers as Record<string, string>;
}

/** Checks that an application event has the shape `{ key?, value, headers?, id? }`. */
export function checkEvent(event: unknown): asserts event is EventInput {
  if (event === null || typeof event !== 'object') {
    throw new NotSerialisableError('an event must be an object { key?, value, headers? }');
  }
  const id = (event as { id?: unknown }).id;
  if (id !== undefined && (typeof id !== 'string' || id.length === 0)) {
    throw new NotSerialisableError('an event id must be a non-empty string');
  }
}

/**
 * Turns what `tx.publish` receives into the StagedEvent that travels in the COMMIT decision, validating it
 * first (topic name, serialisability, size), so a bad event fails the call that staged it, not the relay.
 */
export function stageEvent(
  topic: string,
  event: EventInput,
  sequence: number,
  maxEventBytes: number = ENVELOPE_DEFAULTS.maxEventBytes,
): StagedEvent {
  validateTopic(topic);
  checkEvent(event);
  const { bytes, contentType } = encodeValue(event.value);
  const key = encodeKey(event.key) ?? Buffer.alloc(0);
  const headers: Record<string, string> = {
    ...checkHeaders(event.headers),
    [HEADERS.contentType]: contentType,
  };
  validateSize(topic, eventBytes(key, bytes, headers) + ENVELOPE_OVERHEAD_BYTES, maxEventBytes);
  return { topic, key, value: bytes, headers, sequence };
}

/**
 * What one transaction may stage: the coordinator's defaults (its `maxEventsPerTx` / `maxEventBytes`) and what
 * `tx.publish` checks against, so an event over them fails the publish call, not the whole transaction at Commit.
 */
export const STAGING_LIMITS = {
  maxEventsPerTx: 256,
  /** Bytes of staged events per transaction, counted by `stagedEventBytes`; they travel in one log record. */
  maxEventBytes: 512 * 1024,
};

/** A staged event's size as the transaction limit counts it: topic, key, value and headers. */
export function stagedEventBytes(e: StagedEvent): number {
  return Buffer.byteLength(e.topic) + eventBytes(e.key, e.value, e.headers);
}

/**
 * Most bytes a transaction's staged events may take in its decision record, counted by `loggedEventBytes`: the
 * record must fit one log write (etcd refuses requests over 1.5 MiB), and a decision that could never be written
 * would hold its prepared branches. Checked when an event is staged and again by the coordinator.
 */
export const MAX_LOGGED_EVENT_BYTES = 1_000_000;

/** What a staged event takes in the decision record: key and value as base64, topic and headers as JSON. */
export function loggedEventBytes(e: Pick<StagedEvent, 'topic' | 'key' | 'value' | 'headers'>): number {
  const b64 = (n: number) => 4 * Math.ceil(n / 3);
  return (
    b64(e.key.length) +
    b64(e.value.length) +
    Buffer.byteLength(JSON.stringify(e.topic)) +
    Buffer.byteLength(JSON.stringify(e.headers ?? {})) +
    32 // field names and the sequence
  );
}

export const ENVELOPE_DEFAULTS = {
  /** Largest event accepted (key + value + headers), 1 MiB: Kafka's default `message.max.bytes` is 1 MiB + 12 B. */
  maxEventBytes: 1024 * 1024,
} as const;

/** Room kept for the id, xid and published-at headers the relay adds to a staged event. */
export const ENVELOPE_OVERHEAD_BYTES = 256;
