/**
 * What a subscriber's handler receives: a Kafka record seen through the DMTP envelope. Headers and the value
 * are decoded lazily, on first use, so a consumer that filters on one header or only counts events pays for
 * no JSON parsing and no header copying (the consumer benchmark compares against plain kafkajs).
 */
import type { KafkaMessage } from 'kafkajs';
import { decodeValue, HEADERS } from './envelope';

type RawHeaders = KafkaMessage['headers'];

/** A header value as kafkajs decodes it; null for a header without value (legal in Kafka, outside kafkajs' types). */
type RawHeader = Buffer | string | null | undefined | (Buffer | string | null)[];

/** Text of a header value; a header without value (null) reads as absent rather than throwing. */
function headerText(v: RawHeader): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (Array.isArray(v)) return v.length === 0 ? undefined : headerText(v[v.length - 1]);
  return typeof v === 'string' ? v : v.toString('utf8');
}

export class ReceivedEvent {
  private decodedHeaders?: Record<string, string>;
  private decodedValue?: { v: unknown };

  constructor(
    readonly topic: string,
    readonly partition: number,
    /** The record's Kafka message, as kafkajs delivered it. */
    readonly message: KafkaMessage,
  ) {}

  /** Offset in the partition (decimal text: Kafka offsets are 64-bit). */
  get offset(): string {
    return this.message.offset;
  }

  get key(): Buffer | null {
    return this.message.key ?? null;
  }

  /** The key as UTF-8 text (undefined for a record without key). */
  get keyText(): string | undefined {
    return this.message.key ? this.message.key.toString('utf8') : undefined;
  }

  /** The value as bytes, undecoded. */
  get raw(): Buffer | null {
    return this.message.value;
  }

  /** One header as text, without decoding the others (the last one if repeated). */
  header(name: string): string | undefined {
    const h: RawHeaders = this.message.headers;
    return h ? headerText(h[name]) : undefined;
  }

  /** All headers as text (the last value of a repeated header). */
  get headers(): Record<string, string> {
    if (!this.decodedHeaders) {
      const out: Record<string, string> = {};
      const h = this.message.headers ?? {};
      for (const k of Object.keys(h)) {
        const v = headerText(h[k]);
        if (v !== undefined) out[k] = v;
      }
      this.decodedHeaders = out;
    }
    return this.decodedHeaders;
  }

  /**
   * The stable event id; for a record without a DMTP id (published by something else), its coordinates
   * `<topic>:<partition>:<offset>`, which are just as stable across redeliveries.
   */
  get id(): string {
    return this.header(HEADERS.id) ?? `${this.topic}:${this.partition}:${this.offset}`;
  }

  /** The publishing transaction, for transactional events. */
  get xid(): string | undefined {
    return this.header(HEADERS.xid);
  }

  /** The record's Kafka timestamp, ms since the Unix epoch. */
  get timestampMs(): number {
    return Number(this.message.timestamp);
  }

  /** When the event was published: the DMTP header, else the Kafka timestamp. */
  get publishedAtMs(): number {
    const h = this.header(HEADERS.publishedAtMs);
    const n = h === undefined ? NaN : Number(h);
    return Number.isFinite(n) ? n : this.timestampMs;
  }

  /** The decoded value: parsed JSON, or bytes (throws on malformed JSON, which fails the handler attempt). */
  get value(): unknown {
    if (!this.decodedValue) {
      this.decodedValue = { v: decodeValue(this.message.value, this.header(HEADERS.contentType)) };
    }
    return this.decodedValue.v;
  }
}
