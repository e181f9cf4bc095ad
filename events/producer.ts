/**
 * The event producer both sides share: the coordinator's outbox relay (`publishStaged`) and plain application
 * publishes (`publish`).
 *
 * - One kafkajs idempotent producer, `acks=all`, one request in flight per broker, so events with the same key
 *   reach their partition in publish order and a kafkajs retry never duplicates or reorders them.
 * - Every input is validated before anything is sent (topic name, serialisability, size): bad input is a
 *   typed, non-retriable failure of that event only, and nothing of it reaches Kafka.
 * - Sends are coalesced without waiting: while one request is in flight, the events published meanwhile queue
 *   up and go together in the next `sendBatch` (all events of one `publishStaged` call always share a send).
 * - Neither `publish` nor `publishStaged` rejects: each answers a delivery report per event (sent, with
 *   partition and offset; or failed, with the typed error and its reason). Kafka unreachable after kafkajs'
 *   own retries is `reason: 'unavailable'`, retriable.
 * - A keyless staged event is partitioned by its id (as a key would be), so the relay's retries of it land on one
 *   partition; plain keyless publishes go round-robin.
 * - After a failed send the kafkajs producer is replaced (new producer id) before the next one: the failed
 *   request may have landed, and reusing its sequence numbers would make the broker drop the next events as
 *   duplicates of it. The retried events then arrive at most twice, with the same ids, which consumers drop.
 * - A topic found missing (no such topic with auto-create off, or no access) is remembered: its events are
 *   answered `topic-unavailable` without a request until a metadata check finds the topic (made before an
 *   event of it is answered, once due: 1 s after, then doubling up to 30 s). Each request naming it would wait
 *   out kafkajs' retries (~8 s) with every other topic's events queued behind it, one stalled topic holding up
 *   them all. So that the first request does not either, a topic this producer has not sent to yet is looked
 *   up before it (`scoutTopics`, a few ms, once per topic): one the brokers neither have nor will create is
 *   missing from the start. Past TOPICS_REMEMBERED topics sent to (or missing), the oldest is forgotten.
 */
import { Partitioners, type Kafka, type Message, type Producer, type RecordMetadata } from 'kafkajs';
import { checkOptionalBoolean, checkWholeNumber, logger, MAX_TIMER_MS, withoutUndefined } from '../common';
import type { StagedEvent } from '../proto/gen/dmtp/v1/types';
import { scoutTopics } from './admin';
import {
  CLIENT_DEFAULTS,
  createKafka,
  loggableClientOptions,
  toDeliveryError,
  type KafkaClientOptions,
} from './client';
import {
  checkEvent,
  checkHeaders,
  encodeKey,
  encodeValue,
  ENVELOPE_DEFAULTS,
  HEADERS,
  randomEventId,
  stagedEventId,
  type EventInput,
} from './envelope';
import {
  DELIVERY_FAILURE_REASONS,
  KafkaUnavailableError,
  toInputError,
  type DeliveryError,
  type DeliveryFailureReason,
} from './errors';
import { endSendSpan, startSendSpan } from './tracing';
import { eventBytes, validateSize, validateTopic, type HeaderValue } from './validation';

export interface ProducerOptions extends KafkaClientOptions {
  /** Largest event accepted (key + value + headers); larger ones fail with reason 'too-large'. */
  maxEventBytes?: number;
  /** How long the broker may take to get the acknowledgement of all in-sync replicas. */
  ackTimeoutMs?: number;
  /** Most events coalesced into one request (one `publishStaged` call is never split, whatever its size). */
  maxBatchEvents?: number;
  /**
   * Most bytes (keys + values + headers) coalesced into one request; keep it under the broker's
   * `message.max.bytes` (1 MiB by default), as a partition's events of one request travel in one record batch.
   */
  maxBatchBytes?: number;
  /**
   * Most events waiting for Kafka in this producer (queued, not yet in a request). A publish beyond it is
   * answered at once `unavailable` (retriable) instead of queued: with Kafka down, a publisher that does not
   * wait for its reports would otherwise grow memory without bound.
   */
  maxQueuedEvents?: number;
  /**
   * Whether a request may make the broker create a topic it does not have (when the broker's own
   * `auto.create.topics.enable` lets it). `false`: a missing topic is `topic-unavailable` whatever the broker's
   * setting, so a misspelt topic name never creates a topic. Default `true` (kafkajs' default).
   */
  allowAutoTopicCreation?: boolean;
  /**
   * OpenTelemetry: each plain `publish` in a PRODUCER span `send <topic>` whose context travels in the event's
   * headers (events/tracing.ts). Default off. (A transaction's events carry the initiator's context instead.)
   */
  tracing?: boolean;
}

export const DEFAULTS = {
  ...CLIENT_DEFAULTS,
  clientId: 'dmtp-producer',
  maxEventBytes: ENVELOPE_DEFAULTS.maxEventBytes,
  ackTimeoutMs: 30_000,
  maxBatchEvents: 1_000,
  maxBatchBytes: 900_000,
  maxQueuedEvents: 100_000,
  /** kafkajs' idempotent producer keeps one request in flight per broker (it locks the broker per send). */
  maxInFlightRequests: 1,
} as const;

export interface DeliverySent {
  status: 'sent';
  id: string;
  topic: string;
  partition: number;
  /** Offset in the partition (decimal text: Kafka offsets are 64-bit). */
  offset: string;
}

export interface DeliveryFailed {
  status: 'failed';
  id: string;
  topic: string;
  reason: DeliveryFailureReason;
  /** True when publishing the same event again later may work (Kafka was unavailable). */
  retriable: boolean;
  error: DeliveryError;
}

export type DeliveryReport = DeliverySent | DeliveryFailed;

/** What a producer's publishes came to so far, and what waits now (`EventMetrics.trackProducer` exports it). */
export interface ProducerStats {
  /** Events Kafka acknowledged. */
  sent: number;
  /** Reports that said failed, by reason (an event published again after a failure counts again). */
  failed: Record<DeliveryFailureReason, number>;
  /** Events waiting for Kafka in this producer now (queued, not yet in a request). */
  queued: number;
  /** Topics held as missing now: their events are answered `topic-unavailable` without a request. */
  missingTopics: number;
}

interface Outgoing {
  id: string;
  topic: string;
  message: Message;
  /** key + value + headers, as validateSize counted them. */
  bytes: number;
}

interface Group {
  items: Outgoing[];
  /** The items' bytes, summed once when queued. */
  bytes: number;
  done: (reports: DeliveryReport[]) => void;
}

/** A topic found missing: its events are answered `error` at once until a check (due at `checkAt`) finds it. */
interface MissingTopic {
  /** `probing`: a check found it; its events are sent again, and the first that lands forgets it. */
  state: 'missing' | 'probing';
  error: DeliveryError;
  backoffMs: number;
  checkAt: number;
}

/** When a missing topic is checked again: after 1 s, then twice as long each time it is still missing, up to 30 s. */
const MISSING_CHECK_FIRST_MS = 1_000;
const MISSING_CHECK_MAX_MS = 30_000;
/**
 * Most topics remembered as sent to, and as missing: past it the oldest is forgotten (and looked up again when
 * next published to), so a publisher of ever new topic names does not grow the producer without bound.
 */
export const TOPICS_REMEMBERED = 10_000;

const log = logger('events:producer');

function failed(id: string, topic: string, error: DeliveryError): DeliveryFailed {
  return { status: 'failed', id, topic, reason: error.reason, retriable: error.retriable, error };
}

export class EventProducer {
  private readonly o: typeof DEFAULTS & ProducerOptions;
  private readonly kafka: Kafka;
  /** The partition kafkajs' partitioner chose for each message of the current send. */
  private readonly chosen = new WeakMap<Message, number>();
  /**
   * Keyless staged events, partitioned by their stable id instead of round-robin: each relay retry of one event
   * then lands on the same partition, hence at the same group member, whose dedupe window drops the copy.
   */
  private readonly partitionKeys = new WeakMap<Message, string>();
  private producer?: Producer;
  private connecting?: Promise<Producer>;
  private queue: Group[] = [];
  /** Events in `queue`. */
  private queued = 0;
  private draining?: Promise<void>;
  private stopped = false;
  /** Topics found missing, by name (see MissingTopic). */
  private readonly missing = new Map<string, MissingTopic>();
  /** Topics sent to or found present, oldest first: the others are looked up before their first request. */
  private readonly known = new Set<string>();
  private sent = 0;
  private readonly failedBy = Object.fromEntries(DELIVERY_FAILURE_REASONS.map((r) => [r, 0])) as Record<
    DeliveryFailureReason,
    number
  >;

  constructor(options: ProducerOptions) {
    this.o = { ...DEFAULTS, ...withoutUndefined(options) } as typeof DEFAULTS & ProducerOptions;
    for (const k of ['maxEventBytes', 'maxBatchEvents', 'maxBatchBytes', 'maxQueuedEvents'] as const)
      checkWholeNumber('EventProducer', k, this.o[k], 1, Number.MAX_SAFE_INTEGER);
    checkWholeNumber('EventProducer', 'ackTimeoutMs', this.o.ackTimeoutMs, 1, MAX_TIMER_MS);
    for (const k of ['tracing', 'allowAutoTopicCreation'] as const)
      checkOptionalBoolean('EventProducer', k, this.o[k]);
    this.kafka = createKafka(this.o);
  }

  /**
   * Connects (optional: the first publish connects too). Rejects with KafkaUnavailableError, also once stopped:
   * a producer is not started again (its reports of events published after `stop()` stay retriable, for the
   * relay that publishes them again with its next producer).
   */
  async start(): Promise<void> {
    try {
      await this.connected();
    } catch (err) {
      throw toDeliveryError(err, {});
    }
  }

  /** What this producer's publishes came to so far, and what waits now. */
  get stats(): ProducerStats {
    let missingTopics = 0;
    for (const m of this.missing.values()) if (m.state === 'missing') missingTopics++;
    return { sent: this.sent, failed: { ...this.failedBy }, queued: this.queued, missingTopics };
  }

  /** Waits for queued events to be answered, then disconnects. */
  async stop(): Promise<void> {
    this.stopped = true;
    while (this.draining) await this.draining;
    const p = this.producer ?? (await this.connecting?.catch(() => undefined));
    this.producer = undefined;
    this.connecting = undefined;
    await p?.disconnect().catch((err) => log.warn('disconnect failed', { err }));
  }

  /** Publishes one plain (non-transactional) event; never rejects. */
  async publish(topic: string, event: EventInput): Promise<DeliveryReport> {
    const id = (event as EventInput | undefined)?.id ?? randomEventId();
    let traced: ReturnType<typeof startSendSpan> | undefined;
    let item: Outgoing;
    try {
      validateTopic(topic);
      checkEvent(event);
      // After the checks of the topic and the id, which name the span: a publish refused for them has none.
      if (this.o.tracing) traced = startSendSpan(topic, id);
      const { bytes, contentType } = encodeValue(event.value);
      const headers: Record<string, string> = {
        ...traced?.headers,
        ...checkHeaders(event.headers),
        [HEADERS.id]: id,
        [HEADERS.publishedAtMs]: String(Date.now()),
        [HEADERS.contentType]: contentType,
      };
      delete headers[HEADERS.xid]; // a plain event belongs to no transaction
      const key = encodeKey(event.key);
      const size = eventBytes(key, bytes, headers);
      validateSize(topic, size, this.o.maxEventBytes, id);
      item = { id, topic, message: { key, value: bytes, headers }, bytes: size };
    } catch (err) {
      const report = this.counted(failed(id, String(topic), toInputError(err)));
      if (traced) endSendSpan(traced.span, report);
      return report;
    }
    const [report] = await this.enqueue([item]);
    if (traced) endSendSpan(traced.span, report);
    return report;
  }

  /**
   * Publishes a record as it is, without touching its headers or encoding its value: for forwarding records
   * (the subscription's dead-letter writes). The topic and size are still validated; never rejects.
   */
  async publishRecord(
    topic: string,
    record: { key: Buffer | null; value: Buffer | null; headers: Record<string, HeaderValue> },
  ): Promise<DeliveryReport> {
    const raw = record.headers[HEADERS.id];
    const last = Array.isArray(raw) ? raw[raw.length - 1] : raw;
    const id = last === undefined ? '' : last.toString();
    let bytes: number;
    try {
      bytes = eventBytes(record.key, record.value, record.headers);
      validateTopic(topic);
      validateSize(topic, bytes, this.o.maxEventBytes, id);
    } catch (err) {
      return this.counted(failed(id, String(topic), toInputError(err)));
    }
    const [report] = await this.enqueue([{ id, topic, message: { ...record }, bytes }]);
    return report;
  }

  /**
   * Publishes the events a committed transaction staged (the outbox relay's call). Each carries the stable id
   * `<xid>:<sequence>` and the xid in its headers; all valid events go in one send, in the given order (so
   * per key in sequence order). Answers one report per event, in input order; never rejects. Invalid events
   * fail alone and permanently (`retriable: false`); the relay should record them rather than retry them.
   */
  async publishStaged(xid: string, events: StagedEvent[]): Promise<DeliveryReport[]> {
    const reports: (DeliveryReport | undefined)[] = new Array(events.length);
    const items: Outgoing[] = [];
    const slots: number[] = [];
    const now = String(Date.now());
    events.forEach((e, i) => {
      const id = stagedEventId(xid, e.sequence);
      try {
        validateTopic(e.topic);
        const headers: Record<string, string> = {
          ...e.headers,
          [HEADERS.id]: id,
          [HEADERS.xid]: xid,
          [HEADERS.publishedAtMs]: now,
        };
        const key = e.key && e.key.length > 0 ? Buffer.from(e.key) : null;
        const value = Buffer.from(e.value ?? Buffer.alloc(0));
        const bytes = eventBytes(key, value, headers);
        validateSize(e.topic, bytes, this.o.maxEventBytes, id);
        const message: Message = { key, value, headers };
        if (key === null) this.partitionKeys.set(message, id);
        items.push({ id, topic: e.topic, message, bytes });
        slots.push(i);
      } catch (err) {
        reports[i] = this.counted(failed(id, String(e.topic), toInputError(err)));
      }
    });
    if (items.length > 0) {
      const sent = await this.enqueue(items);
      sent.forEach((r, j) => (reports[slots[j]] = r));
    }
    return reports as DeliveryReport[];
  }

  private enqueue(items: Outgoing[]): Promise<DeliveryReport[]> {
    if (this.stopped) {
      const err = new KafkaUnavailableError('the producer is stopped');
      return Promise.resolve(items.map((it) => this.counted(failed(it.id, it.topic, err))));
    }
    if (this.queued > 0 && this.queued + items.length > this.o.maxQueuedEvents) {
      const err = new KafkaUnavailableError(
        `${this.queued} events already wait for Kafka in this producer (maxQueuedEvents ${this.o.maxQueuedEvents}); publish again later`,
      );
      return Promise.resolve(items.map((it) => this.counted(failed(it.id, it.topic, err))));
    }
    return new Promise((resolve) => {
      let bytes = 0;
      for (const it of items) bytes += it.bytes;
      const done = (reports: DeliveryReport[]): void => {
        for (const r of reports) this.counted(r);
        resolve(reports);
      };
      this.queue.push({ items, bytes, done });
      this.queued += items.length;
      if (!this.draining) this.startDraining();
    });
  }

  /**
   * A drain that answered every group without a request (all for missing topics) ends before the publishes of
   * the same turn are queued: those start the next one.
   */
  private startDraining(): void {
    this.draining = this.drain().finally(() => {
      this.draining = undefined;
      if (this.queue.length > 0) this.startDraining();
    });
  }

  /** Sends queued groups one request at a time, each request taking every group that waited meanwhile. */
  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const groups: Group[] = [];
      let n = 0;
      let bytes = 0;
      while (this.queue.length > 0) {
        const next = this.queue[0];
        const full =
          n + next.items.length > this.o.maxBatchEvents || bytes + next.bytes > this.o.maxBatchBytes;
        if (groups.length > 0 && full) break;
        this.queue.shift();
        this.queued -= next.items.length;
        if (this.missing.size > 0) await this.checkDue(next);
        const g = this.missing.size > 0 ? this.withoutMissing(next) : next;
        if (!g) continue;
        groups.push(g);
        n += g.items.length;
        bytes += g.bytes;
      }
      if (groups.length === 0) continue;
      // Connected first: with Kafka unreachable, the request's reports say so without a look-up before it.
      const down = this.producer
        ? undefined
        : await this.connected().then(
            () => undefined,
            (err: unknown) => ({ err }),
          );
      const sending = down ? groups : await this.scout(groups);
      if (sending.length === 0) continue;
      const items = sending.flatMap((g) => g.items);
      const reports = down
        ? this.unsent(items, toDeliveryError(down.err, { topic: items[0].topic, events: items.length }))
        : await this.send(items);
      const unanswered = unreachable(reports);
      if (unanswered) this.answerQueued(unanswered);
      // Topics the metadata says are missing are remembered, and not asked again below.
      const unavailable = new Map<string, DeliveryError>();
      const first = reports[0];
      if (first.status === 'failed' && first.reason === 'topic-unavailable')
        await this.findMissing(items, first.error, unavailable);
      if (items.length > 1 && reports.some(isolating)) {
        // A refusal of one topic or one event (too large, refused, no such topic, no access) fails the whole
        // request: each group is sent again by itself, and a group still refused event by event, so no event
        // fails for another's sake (those that did land arrive again with the same ids).
        for (const g of sending) g.done(await this.sendApart(g.items, sending.length > 1, unavailable));
        continue;
      }
      let at = 0;
      for (const g of sending) {
        g.done(reports.slice(at, at + g.items.length));
        at += g.items.length;
      }
    }
  }

  /**
   * The groups to send, less the events of topics this producer has not sent to yet and the brokers neither have
   * nor will create (found missing here, and answered at once): else their request would wait out kafkajs'
   * retries (~8 s) with everything queued behind it. Topics the brokers have are known from now on; if they
   * cannot tell, or would create the topic, the request goes as it is and finds out.
   */
  private async scout(groups: Group[]): Promise<Group[]> {
    const fresh = new Set<string>();
    for (const g of groups) for (const it of g.items) if (!this.known.has(it.topic)) fresh.add(it.topic);
    if (fresh.size === 0) return groups;
    const topics = [...fresh];
    const autoCreate = this.o.allowAutoTopicCreation !== false; // else the brokers' setting does not matter
    const found = await scoutTopics(this.kafka, topics, { autoCreate }).catch(() => undefined);
    if (!found) return groups;
    for (const t of topics) if (!found.absent.has(t)) this.know(t);
    const mayCreate = autoCreate && found.brokersCreate !== false;
    if (found.absent.size === 0 || mayCreate) return groups;
    for (const [t, error] of found.absent) this.markMissing(t, error);
    return groups.flatMap((g) => this.withoutMissing(g) ?? []);
  }

  /** Remembers a topic as present, forgetting the oldest past TOPICS_REMEMBERED. */
  private know(topic: string): void {
    if (this.known.has(topic)) return;
    if (this.known.size >= TOPICS_REMEMBERED) this.known.delete(this.known.values().next().value as string);
    this.known.add(topic);
  }

  /**
   * Checks each missing topic of `g` whose check is due (a few ms, before the group's events are answered): found,
   * its events are sent again; still missing, or the brokers cannot tell, its next check is twice as far off.
   */
  private async checkDue(g: Group): Promise<void> {
    const now = Date.now();
    const due = new Set<string>();
    for (const it of g.items) {
      const m = this.missing.get(it.topic);
      if (m?.state === 'missing' && now >= m.checkAt) due.add(it.topic);
    }
    if (due.size === 0) return;
    const topics = [...due];
    const absent = await scoutTopics(this.kafka, topics).then(
      (found) => found.absent,
      () => undefined,
    );
    for (const t of topics) {
      const m = this.missing.get(t);
      if (m?.state !== 'missing') continue;
      if (absent && !absent.has(t)) {
        m.state = 'probing';
        this.know(t);
      } else this.markMissing(t, m.error);
    }
  }

  /**
   * A queued group less its events for missing topics, which are answered at once (with the group's other
   * reports, once those are in): undefined when nothing of it is left to send.
   */
  private withoutMissing(g: Group): Group | undefined {
    const isMissing = (topic: string): MissingTopic | undefined => {
      const m = this.missing.get(topic);
      return m?.state === 'missing' ? m : undefined;
    };
    if (!g.items.some((it) => isMissing(it.topic))) return g;
    const reports: DeliveryReport[] = new Array(g.items.length);
    const rest: Outgoing[] = [];
    const slots: number[] = [];
    let bytes = 0;
    g.items.forEach((it, i) => {
      const m = isMissing(it.topic);
      if (m) reports[i] = failed(it.id, it.topic, m.error);
      else {
        rest.push(it);
        slots.push(i);
        bytes += it.bytes;
      }
    });
    if (rest.length === 0) {
      g.done(reports);
      return undefined;
    }
    const done = (sent: DeliveryReport[]): void => {
      sent.forEach((r, j) => (reports[slots[j]] = r));
      g.done(reports);
    };
    return { items: rest, bytes, done };
  }

  /**
   * A request failed `topic-unavailable`, which does not say for which of its topics — nor, with kafkajs, that it
   * was one of them (a topic deleted after this producer used it fails every request until the producer is
   * replaced): the metadata of each (`scoutTopics`, one quick request apiece) tells. The missing ones are
   * remembered and put in `unavailable`; if the metadata cannot be read, nothing is concluded.
   */
  private async findMissing(
    items: Outgoing[],
    error: DeliveryError,
    unavailable: Map<string, DeliveryError>,
  ): Promise<void> {
    const topics = [...new Set(items.map((it) => it.topic))];
    const isMissing = (t: string) => this.missing.get(t)?.state === 'missing';
    const unknown = topics.filter((t) => !isMissing(t));
    const found =
      unknown.length > 0 ? await scoutTopics(this.kafka, unknown).catch(() => undefined) : undefined;
    for (const t of found?.absent.keys() ?? []) this.markMissing(t, error);
    for (const t of topics) if (isMissing(t)) unavailable.set(t, error);
  }

  /** Remembers a topic as missing, or as still missing with its next check twice as far off. */
  private markMissing(topic: string, error: DeliveryError): void {
    const m = this.missing.get(topic);
    const backoffMs = m ? Math.min(m.backoffMs * 2, MISSING_CHECK_MAX_MS) : MISSING_CHECK_FIRST_MS;
    if (m?.state !== 'missing') {
      log.warn('topic unavailable: its events are answered at once until a check finds it', {
        topic,
        reason: error.message,
        nextCheckMs: backoffMs,
      });
    }
    const checkAt = Date.now() + backoffMs;
    if (m) Object.assign(m, { state: 'missing', error, backoffMs, checkAt });
    else {
      if (this.missing.size >= TOPICS_REMEMBERED)
        this.missing.delete(this.missing.keys().next().value as string);
      this.missing.set(topic, { state: 'missing', error, backoffMs, checkAt });
    }
    this.known.delete(topic);
  }

  /**
   * Kafka did not answer a whole request (after kafkajs' own retries): every event queued meanwhile is answered
   * `unavailable` at once. Sent one request after another, each would wait out the same retries again (~10 s
   * per request of up to maxBatchEvents), and their publishers would hear nothing all that time. Events
   * published from now on are sent, and so find out whether Kafka is back.
   */
  private answerQueued(err: DeliveryError): void {
    const waiting = this.queue.splice(0);
    if (waiting.length === 0) return;
    this.queued = 0;
    let events = 0;
    for (const g of waiting) {
      events += g.items.length;
      g.done(g.items.map((it) => failed(it.id, it.topic, err)));
    }
    log.warn('Kafka unreachable: events queued behind the failed request answered unavailable', { events });
  }

  /**
   * Sends a group by itself (when `whole`), then event by event if the group is refused as `isolating`. A topic
   * found unavailable in this pass (`unavailable`) is not asked again: each try costs kafkajs' retries.
   */
  private async sendApart(
    items: Outgoing[],
    whole: boolean,
    unavailable: Map<string, DeliveryError>,
  ): Promise<DeliveryReport[]> {
    if (whole && !items.some((it) => unavailable.has(it.topic))) {
      const reports = await this.send(items);
      if (items.length === 1 || !reports.some(isolating)) return reports;
    }
    const out: DeliveryReport[] = [];
    // After an event that failed and will be sent again, the later ones wait too: sent now, one of the same key
    // would land before it.
    let behind: DeliveryError | undefined;
    for (const it of items) {
      // In order, so per key too.
      const known = unavailable.get(it.topic) ?? behind;
      const [r] = known ? [failed(it.id, it.topic, known)] : await this.send([it]);
      if (r.status === 'failed' && r.reason === 'topic-unavailable') {
        if (!known) await this.findMissing([it], r.error, unavailable);
        unavailable.set(it.topic, r.error);
      } else if (r.status === 'failed' && r.retriable) behind ??= r.error;
      out.push(r);
    }
    return out;
  }

  private async send(items: Outgoing[]): Promise<DeliveryReport[]> {
    let producer: Producer | undefined;
    try {
      producer = await this.connected();
      const byTopic = new Map<string, Message[]>();
      for (const it of items) {
        const list = byTopic.get(it.topic);
        if (list) list.push(it.message);
        else byTopic.set(it.topic, [it.message]);
      }
      const metadata = await producer.sendBatch({
        acks: -1,
        timeout: this.o.ackTimeoutMs,
        topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })),
      });
      for (const topic of byTopic.keys()) {
        this.know(topic);
        if (this.missing.size > 0) this.found(topic);
      }
      return this.reports(items, metadata);
    } catch (err) {
      if (producer && producer === this.producer) this.replace(producer);
      return this.unsent(items, toDeliveryError(err, { topic: items[0]?.topic, events: items.length }));
    }
  }

  /** The reports of a request that failed as a whole (or could not be made: no connection). */
  private unsent(items: Outgoing[], error: DeliveryError): DeliveryFailed[] {
    log.warn('send failed', { events: items.length, reason: error.reason, err: error.message });
    return items.map((it) => failed(it.id, it.topic, error));
  }

  /** Counts a report in `stats`; answers it. */
  private counted<R extends DeliveryReport>(r: R): R {
    if (r.status === 'sent') this.sent++;
    else this.failedBy[r.reason]++;
    return r;
  }

  /** Forgets a topic found missing once events of it landed. */
  private found(topic: string): void {
    if (!this.missing.delete(topic)) return;
    log.info('topic available again: its events are sent', { topic });
  }

  /** Offsets per event: a partition's events of one request are appended in order from its base offset. */
  private reports(items: Outgoing[], metadata: RecordMetadata[]): DeliveryReport[] {
    const base = new Map<string, bigint>();
    for (const m of metadata)
      if (m.baseOffset !== undefined) base.set(`${m.topicName}\0${m.partition}`, BigInt(m.baseOffset));
    const next = new Map<string, bigint>();
    return items.map((it) => {
      const partition = it.message.partition ?? this.chosen.get(it.message) ?? -1;
      const tp = `${it.topic}\0${partition}`;
      const offset = next.get(tp) ?? base.get(tp) ?? -1n;
      next.set(tp, offset + 1n);
      return { status: 'sent', id: it.id, topic: it.topic, partition, offset: offset.toString() };
    });
  }

  private connected(): Promise<Producer> {
    // A stopped producer opens no connection again: nothing would ever close it (and its queue is refused).
    if (this.stopped)
      return Promise.reject(
        new KafkaUnavailableError('the producer is stopped: create a new one to publish'),
      );
    if (this.producer) return Promise.resolve(this.producer);
    if (!this.connecting) {
      const chosen = this.chosen;
      const partitionKeys = this.partitionKeys;
      const p = this.kafka.producer({
        idempotent: true,
        allowAutoTopicCreation: this.o.allowAutoTopicCreation ?? true,
        maxInFlightRequests: this.o.maxInFlightRequests,
        retry: {
          retries: this.o.requestRetries,
          initialRetryTime: this.o.initialRetryTimeMs,
          maxRetryTime: this.o.maxRetryTimeMs,
        },
        createPartitioner: () => {
          const inner = Partitioners.DefaultPartitioner();
          return (args) => {
            // A stable id stands in for the missing key: hashed over the topic's partitions (from the metadata
            // kafkajs holds anyway) exactly as a key would be; the record itself still goes out without a key.
            const key = partitionKeys.get(args.message);
            const partition = inner(
              key === undefined ? args : { ...args, message: { ...args.message, key } },
            );
            chosen.set(args.message, partition);
            return partition;
          };
        },
      });
      this.connecting = p.connect().then(
        () => {
          this.producer = p;
          this.connecting = undefined;
          log.info('connected', { ...loggableClientOptions(this.o), brokers: this.o.brokers.join(',') });
          return p;
        },
        async (err) => {
          this.connecting = undefined;
          await p.disconnect().catch(() => undefined);
          throw err;
        },
      );
    }
    return this.connecting;
  }

  /** Drops a producer whose last send failed; the next send connects a new one (new producer id). */
  private replace(p: Producer): void {
    this.producer = undefined;
    void p.disconnect().catch((err) => log.warn('disconnect of the failed producer failed', { err }));
  }
}

/** Every event of a request failed because Kafka was unreachable: that error, else undefined. */
function unreachable(reports: DeliveryReport[]): DeliveryError | undefined {
  const first = reports[0];
  if (!first || first.status !== 'failed' || first.reason !== 'unavailable') return undefined;
  return reports.every((r) => r.status === 'failed' && r.reason === 'unavailable') ? first.error : undefined;
}

/** A failure of one topic or one event, not of Kafka: sending the others apart lets them through. */
function isolating(r: DeliveryReport): boolean {
  return r.status === 'failed' && (!r.retriable || r.reason === 'topic-unavailable');
}
