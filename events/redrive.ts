/**
 * Redrive: sends dead-lettered events back to the topic they came from, once whatever made them fail is fixed.
 *
 * - A copy goes back with its key, value and original headers (bytes untouched), to the partition it came from,
 *   and with its event id: a consumer that already handled it (a crash between redrive and progress) drops it.
 * - It is addressed to the group that gave up on it (`dmtp-redrive-group`): other DMTP groups of the topic, which
 *   handled the event the first time, pass over it. `allGroups` sends it to every group.
 * - `dmtp-published-at-ms` is set to the redrive's time (an expired event gets a fresh `maxAgeMs`), and
 *   `dmtp-redriven-from` names the copy (`<dead-letter topic>/<partition>/<offset>`).
 * - An event that had no `dmtp-event-id` gets the id a consumer gave it the first time (`<topic>:<partition>:
 *   <offset>` of the original), so a copy sent twice is still one id.
 * - Progress is kept as the offsets of consumer group `dmtp-redrive.<dead-letter topic>`, which the run joins to
 *   read, committed once Kafka acknowledged the copies before them: a second run goes on after the last copy the
 *   first one sent. A run reads up to the end the topic had when it began, then returns.
 * - A copy that cannot be sent as it came is skipped and reported with its coordinates, and progress passes it:
 *   its value or headers were left out (too large to dead-letter), it has no `dmtp-dlq-topic` header, or its
 *   topic no longer exists. A copy whose partition no longer exists goes by its key instead.
 */
import type { Admin, Consumer, IHeaders, KafkaMessage, Message, Producer } from 'kafkajs';
import {
  FailedPreconditionError,
  InvalidArgumentError,
  MAX_TIMER_MS,
  NotFoundError,
  checkWholeNumber,
  logger,
} from '../common';
import { createKafka, type KafkaClientOptions } from './client';
import { DEAD_LETTER_HEADERS } from './dead-letter';
import { HEADERS, REDRIVE_HEADERS } from './envelope';
import { KafkaUnavailableError } from './errors';
import { eventBytes, validateTopic, type HeaderValue } from './validation';

const log = logger('events:redrive');

export interface RedriveOptions extends KafkaClientOptions {
  /** The dead-letter topic to read (e.g. `orders.dlq`). */
  deadLetterTopic: string;
  /** Send every copy here instead of to the topic it came from (its `dmtp-dlq-topic`). */
  to?: string;
  /** Send each copy to every group of its topic, not only to the one that gave up on it. */
  allGroups?: boolean;
  /** Where progress is kept (default `dmtp-redrive.<deadLetterTopic>`). */
  progressGroup?: string;
  /** Stop after this many copies (sent or skipped). */
  max?: number;
  /** Report what would be sent; send nothing, keep no progress. */
  dryRun?: boolean;
  /** Give up on reaching the end after this long (default 60 s); what was sent by then is kept as progress. */
  timeoutMs?: number;
  /** Called for each copy, in order per partition, once it is sent (or skipped). */
  onCopy?: (copy: RedriveCopy) => void;
  /** Ends the run early (e.g. Ctrl-C); what was sent by then is kept as progress. */
  signal?: AbortSignal;
}

export interface RedriveCopy {
  partition: number;
  offset: string;
  /** Its `dmtp-event-id`, if it has one. */
  id?: string;
  /** The group that gave up on it, and why (`handler-failed` | `expired`). */
  group?: string;
  kind?: string;
  /** Where it went (or would go, in a dry run). */
  to?: { topic: string; partition?: number };
  /** Why it was not sent. */
  skipped?: string;
}

export interface RedriveResult {
  redriven: number;
  skipped: RedriveCopy[];
  /** False when `max` or the timeout stopped the run before the end the topic had when it began. */
  complete: boolean;
  progressGroup: string;
}

export const REDRIVE_DEFAULTS = { timeoutMs: 60_000 } as const;

export function defaultProgressGroup(deadLetterTopic: string): string {
  return `dmtp-redrive.${deadLetterTopic}`;
}

type RawHeader = Buffer | string | null | undefined | (Buffer | string | null)[];

function text(v: RawHeader): string | undefined {
  if (Array.isArray(v)) return v.length ? text(v[v.length - 1]) : undefined;
  return v === null || v === undefined ? undefined : String(v);
}

/**
 * What one dead-letter copy is sent back as (pure): the record to send and where, or why it is skipped. `now`
 * becomes its `dmtp-published-at-ms`.
 */
export function redriveMessage(
  deadLetterTopic: string,
  partition: number,
  m: Pick<KafkaMessage, 'key' | 'value' | 'headers' | 'offset'>,
  o: Pick<RedriveOptions, 'to' | 'allGroups'>,
  now = Date.now(),
): { copy: RedriveCopy; message?: Message & { topic: string } } {
  const h = (m.headers ?? {}) as Record<string, RawHeader>;
  const from = text(h[DEAD_LETTER_HEADERS.topic]);
  const fromPartition = Number(text(h[DEAD_LETTER_HEADERS.partition]));
  const group = text(h[DEAD_LETTER_HEADERS.group]);
  // No id of its own: the one consumers gave the original (ReceivedEvent.id), the same in every copy sent.
  const id =
    text(h[HEADERS.id]) ??
    (from === undefined
      ? undefined
      : `${from}:${text(h[DEAD_LETTER_HEADERS.partition])}:${text(h[DEAD_LETTER_HEADERS.offset])}`);
  const copy: RedriveCopy = {
    partition,
    offset: m.offset,
    id,
    group,
    kind: text(h[DEAD_LETTER_HEADERS.kind]),
  };
  const where = `${deadLetterTopic}/${partition}/${m.offset}`;
  if (from === undefined) {
    return { copy: { ...copy, skipped: `not a dead-letter copy: no ${DEAD_LETTER_HEADERS.topic} header` } };
  }
  const original = `${from}/${text(h[DEAD_LETTER_HEADERS.partition])}/${text(h[DEAD_LETTER_HEADERS.offset])}`;
  for (const [header, what] of [
    [DEAD_LETTER_HEADERS.valueOmitted, 'value'],
    [DEAD_LETTER_HEADERS.headersOmitted, 'headers'],
  ] as const) {
    const bytes = text(h[header]);
    if (bytes !== undefined) {
      return {
        copy: {
          ...copy,
          skipped: `the copy has no ${what} (${bytes} bytes left out: too large to dead-letter); the original is at ${original} while the topic keeps it`,
        },
      };
    }
  }
  if (!o.allGroups && group === undefined) {
    return { copy: { ...copy, skipped: `no ${DEAD_LETTER_HEADERS.group} header: send it with allGroups` } };
  }
  const headers: IHeaders = {};
  for (const [k, v] of Object.entries(h)) {
    if (k.startsWith('dmtp-dlq-') || k === REDRIVE_HEADERS.group || k === REDRIVE_HEADERS.from) continue;
    if (Array.isArray(v)) {
      const kept = v.filter((one): one is string | Buffer => one !== null && one !== undefined);
      if (kept.length > 0) headers[k] = kept;
    } else if (v !== null && v !== undefined) {
      headers[k] = v;
    }
  }
  headers[HEADERS.id] = id!;
  headers[HEADERS.publishedAtMs] = String(now);
  headers[REDRIVE_HEADERS.from] = where;
  if (!o.allGroups) headers[REDRIVE_HEADERS.group] = group!;
  const topic = o.to ?? from;
  // Back to its own partition (per-key order, and the group member whose dedupe window saw it), when it exists.
  const toPartition = o.to === undefined && Number.isInteger(fromPartition) ? fromPartition : undefined;
  return {
    copy: { ...copy, to: { topic, partition: toPartition } },
    message: { topic, key: m.key, value: m.value, headers, partition: toPartition },
  };
}

function check(o: RedriveOptions): void {
  validateTopic(o.deadLetterTopic);
  if (o.to !== undefined) validateTopic(o.to);
  if (o.max !== undefined) checkWholeNumber('redrive', 'max', o.max, 0, Number.MAX_SAFE_INTEGER);
  if (o.timeoutMs !== undefined) checkWholeNumber('redrive', 'timeoutMs', o.timeoutMs, 1, MAX_TIMER_MS);
  if (o.progressGroup !== undefined && !/^[A-Za-z0-9._-]{1,249}$/.test(o.progressGroup)) {
    throw new InvalidArgumentError(
      `redrive: progressGroup must be 1-249 characters of [A-Za-z0-9._-], got '${o.progressGroup}'`,
      { details: { option: 'progressGroup' } },
    );
  }
}

/** Most bytes of copies in one produce request (EventProducer's maxBatchBytes): under message.max.bytes. */
const MAX_SEND_BYTES = 900_000;

/**
 * Sends the dead-letter topic's copies back (see the module comment). Throws NotFoundError for a dead-letter or
 * `to` topic that does not exist, KafkaUnavailableError when Kafka cannot be reached or a send fails,
 * FailedPreconditionError when another run of the same topic holds some of its partitions (progress stays at the
 * last copy acknowledged).
 */
export async function redrive(o: RedriveOptions): Promise<RedriveResult> {
  check(o);
  const progressGroup = o.progressGroup ?? defaultProgressGroup(o.deadLetterTopic);
  const timeoutMs = o.timeoutMs ?? REDRIVE_DEFAULTS.timeoutMs;
  const kafka = createKafka(o);
  const admin: Admin = kafka.admin();
  let consumer: Consumer | undefined;
  let producer: Producer | undefined;
  const result: RedriveResult = { redriven: 0, skipped: [], complete: false, progressGroup };
  const unavailable = (err: unknown, what: string) =>
    new KafkaUnavailableError(
      `redrive ${o.deadLetterTopic}: ${what}: ${(err as Error).message ?? String(err)}`,
      {
        cause: err,
      },
    );
  const missing = (topic: string) =>
    new NotFoundError(`redrive: topic '${topic}' does not exist`, { details: { topic } });
  try {
    let topics: Set<string>;
    let ends: { partition: number; high: string; low: string }[];
    let stored: { partition: number; offset: string }[];
    try {
      await admin.connect();
      topics = new Set(await admin.listTopics());
      if (!topics.has(o.deadLetterTopic)) throw missing(o.deadLetterTopic);
      if (o.to !== undefined && !topics.has(o.to)) throw missing(o.to);
      ends = await admin.fetchTopicOffsets(o.deadLetterTopic);
      stored =
        (await admin.fetchOffsets({ groupId: progressGroup, topics: [o.deadLetterTopic] }))[0]?.partitions ??
        [];
    } catch (err) {
      throw err instanceof NotFoundError ? err : unavailable(err, 'cannot read the topic');
    }
    // Per partition: the next offset to read, and the end the topic had at the start.
    const todo = new Map<number, { next: bigint; end: bigint }>();
    for (const e of ends) {
      const kept = stored.find((s) => s.partition === e.partition)?.offset;
      const low = BigInt(e.low);
      const next = kept !== undefined && kept !== '-1' && BigInt(kept) > low ? BigInt(kept) : low;
      if (next < BigInt(e.high)) todo.set(e.partition, { next, end: BigInt(e.high) });
    }
    let budget = o.max ?? Infinity;
    if (todo.size === 0 || budget === 0 || o.signal?.aborted) {
      result.complete = todo.size === 0;
      return result;
    }
    // The partitions of each topic copies go to (null: the topic is gone), read once per run.
    const partitionsOf = new Map<string, Promise<Set<number> | null>>();
    const partitions = (topic: string) => {
      let p = partitionsOf.get(topic);
      if (!p) {
        p = topics.has(topic)
          ? admin
              .fetchTopicMetadata({ topics: [topic] })
              .then((md) => new Set(md.topics[0]?.partitions.map((x) => x.partitionId) ?? []))
          : Promise.resolve(null);
        partitionsOf.set(topic, p);
      }
      return p;
    };
    if (!o.dryRun) {
      producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false });
      await producer.connect().catch((err) => {
        throw unavailable(err, 'cannot connect a producer');
      });
    }
    // Reading in the progress group: it starts at the offsets stored, and progress is a plain offset commit.
    consumer = kafka.consumer({
      groupId: progressGroup,
      allowAutoTopicCreation: false,
      maxWaitTimeInMs: 200,
    });
    let finish!: (err?: unknown) => void;
    const done = new Promise<void>((resolve, reject) => (finish = (err) => (err ? reject(err) : resolve())));
    const timer = setTimeout(finish, timeoutMs);
    const onAbort = () => finish();
    o.signal?.addEventListener('abort', onAbort);
    const reached = (partition: number) => {
      todo.delete(partition);
      if (todo.size === 0) finish();
    };
    // Another run of the same topic is in the group (it holds partitions this one waits for): end, do not wait.
    consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
      const mine = new Set(payload.memberAssignment[o.deadLetterTopic] ?? []);
      const held = [...todo.keys()].filter((p) => !mine.has(p));
      if (held.length > 0) {
        finish(
          new FailedPreconditionError(
            `redrive ${o.deadLetterTopic}: another run holds partition(s) ${held.join(', ')} of it (group ` +
              `${progressGroup} has other members); run one at a time — what this run sent is kept`,
            { details: { topic: o.deadLetterTopic, group: progressGroup } },
          ),
        );
      }
    });
    // A batch of transaction markers alone (a transactional writer's) never reaches eachBatch: it moves the end.
    consumer.on(consumer.events.END_BATCH_PROCESS, ({ payload }) => {
      const left = todo.get(payload.partition);
      if (left && payload.batchSize === 0 && BigInt(payload.lastOffset) + 1n >= left.end)
        reached(payload.partition);
    });
    try {
      await consumer.connect();
      await consumer.subscribe({ topics: [o.deadLetterTopic], fromBeginning: true });
    } catch (err) {
      clearTimeout(timer);
      o.signal?.removeEventListener('abort', onAbort);
      throw unavailable(err, 'cannot read the topic');
    }
    await consumer.run({
      autoCommit: false,
      eachBatch: async ({ batch, isRunning, isStale }) => {
        const left = todo.get(batch.partition);
        if (!left || budget <= 0) return;
        const sends: (Message & { topic: string })[] = [];
        const copies: RedriveCopy[] = [];
        let next = left.next;
        let whole = true;
        let reachedEnd = false;
        for (const m of batch.messages) {
          if (!isRunning() || isStale() || budget <= 0 || o.signal?.aborted) {
            whole = false;
            break;
          }
          const offset = BigInt(m.offset);
          if (offset < left.next) continue;
          // Past the end the run began with (also when what was left before it is gone: retention, compaction).
          if (offset >= left.end) {
            reachedEnd = true;
            break;
          }
          const r = redriveMessage(o.deadLetterTopic, batch.partition, m, o);
          if (r.message) {
            let known: Set<number> | null;
            try {
              known = await partitions(r.message.topic);
            } catch (err) {
              // Nothing of this batch is sent or stored: the run ends here, failed (a throw would only make
              // kafkajs restart the consumer, and the run wait for its timeout).
              finish(unavailable(err, `cannot read the partitions of '${r.message.topic}'`));
              return;
            }
            if (known === null) {
              r.copy.skipped = `topic '${r.message.topic}' does not exist (any more)`;
              delete r.copy.to;
            } else {
              if (r.message.partition !== undefined && !known.has(r.message.partition)) {
                // That partition is gone (the topic was made again with fewer): by its key, as a publish would.
                delete r.message.partition;
                r.copy.to = { topic: r.message.topic };
              }
              sends.push(r.message);
            }
          }
          copies.push(r.copy);
          next = offset + 1n;
          budget--;
        }
        // Records kafkajs does not hand over (transaction markers) up to the batch's last offset are read too.
        if (reachedEnd) next = left.end;
        else if (whole && BigInt(batch.lastOffset()) + 1n > next) next = BigInt(batch.lastOffset()) + 1n;
        if (next > left.end) next = left.end;
        if (next === left.next) return;
        if (!o.dryRun) {
          try {
            await sendAll(producer!, sends);
            // Only once Kafka has them: a crash before this line sends them again (same ids), never loses them.
            await consumer!.commitOffsets([
              { topic: o.deadLetterTopic, partition: batch.partition, offset: String(next) },
            ]);
          } catch (err) {
            finish(unavailable(err, `sending the copies of partition ${batch.partition} failed`));
            return;
          }
        }
        for (const copy of copies) {
          if (copy.skipped === undefined) result.redriven++;
          else result.skipped.push(copy);
          o.onCopy?.(copy);
        }
        left.next = next;
        if (left.next >= left.end) reached(batch.partition);
        else if (budget <= 0) finish();
      },
    });
    for (const [partition, { next }] of todo) {
      consumer.seek({ topic: o.deadLetterTopic, partition, offset: String(next) });
    }
    try {
      await done;
    } finally {
      clearTimeout(timer);
      o.signal?.removeEventListener('abort', onAbort);
    }
    result.complete = todo.size === 0;
    if (!result.complete)
      log.warn('redrive stopped before the end', { topic: o.deadLetterTopic, left: todo.size });
    return result;
  } finally {
    await consumer?.disconnect().catch(() => undefined);
    await producer?.disconnect().catch(() => undefined);
    await admin.disconnect().catch(() => undefined);
  }
}

/**
 * Sends `messages` in requests of at most MAX_SEND_BYTES (a whole fetched batch in one record batch per partition
 * could pass the topic's max.message.bytes), and checks that every partition sent to explicitly answered.
 */
async function sendAll(producer: Producer, messages: (Message & { topic: string })[]): Promise<void> {
  let chunk: (Message & { topic: string })[] = [];
  let bytes = 0;
  const flush = async () => {
    if (chunk.length === 0) return;
    const byTopic = new Map<string, Message[]>();
    for (const { topic, ...msg } of chunk) byTopic.set(topic, [...(byTopic.get(topic) ?? []), msg]);
    const answers = await producer.sendBatch({
      acks: -1,
      topicMessages: [...byTopic].map(([topic, msgs]) => ({ topic, messages: msgs })),
    });
    const answered = new Set(answers.map((a) => `${a.topicName}/${a.partition}`));
    for (const m of chunk) {
      if (m.partition !== undefined && !answered.has(`${m.topic}/${m.partition}`)) {
        // kafkajs drops messages for a partition it has no leader for, and the send still succeeds
        throw new Error(`no acknowledgement for ${m.topic} partition ${m.partition}`);
      }
    }
    chunk = [];
    bytes = 0;
  };
  for (const m of messages) {
    const size = eventBytes(
      m.key as Buffer | null,
      m.value as Buffer | null,
      m.headers as Record<string, HeaderValue>,
    );
    if (bytes + size > MAX_SEND_BYTES) await flush();
    chunk.push(m);
    bytes += size;
  }
  await flush();
}
