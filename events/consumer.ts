/**
 * `subscribe()`: a consumer-group subscription with DMTP's guarantees on top of kafkajs.
 *
 * - Consumer groups: inside a group each partition has one consumer (point-to-point); every group gets every
 *   event (publish-subscribe).
 * - Per event, in partition order: filter → dedupe → max age → handler, retried with backoff, then the
 *   dead-letter topic with the reason and the original coordinates in headers. An expired event goes to the
 *   dead-letter topic without reaching the handler.
 * - Offsets are committed (once per batch, in the background but in order, autoCommit off) only up to events whose handler, filter or
 *   dead-letter write finished, so a crash redelivers instead of losing.
 * - `concurrency` partitions are handled at once (kafkajs partitionsConsumedConcurrently); inside a partition
 *   (hence per key) events are handled one after the other, in order.
 * - `stop()`: no new batch starts, retry waits are cut short (that event is left uncommitted, to be redelivered),
 *   in-flight handlers finish (within `stopGraceMs`, then they are abandoned, their events left uncommitted),
 *   offsets are committed, the consumer leaves the group.
 */
import type { Consumer, EachBatchPayload, Kafka } from 'kafkajs';
import { backoffMs, DmtpError, logger } from '../common';
import { ensureTopics, missingTopics } from './admin';
import { clientOptions, createKafka, loggableClientOptions, toDeliveryError } from './client';
import {
  DEAD_LETTER_HEADERS,
  deadLetterMessage,
  defaultDeadLetterTopic,
  describeError,
  headersOmitted,
  withoutValue,
  type DeadLetterKind,
  type DeadLetterRecord,
} from './dead-letter';
import { DedupeWindow } from './dedupe';
import { REDRIVE_HEADERS } from './envelope';
import { KafkaUnavailableError, TopicUnavailableError } from './errors';
import { compileFilter } from './filter';
import { consumerLag, type ConsumerLag } from './lag';
import { EventProducer } from './producer';
import { ReceivedEvent } from './received-event';
import {
  compileSubscribeOptions,
  type CompiledSubscribeOptions,
  type SubscribeOptions,
  type SubscriptionStats,
} from './subscribe-options';
import { tracedAttempt } from './tracing';
import { validateTopic } from './validation';

/** `handled`: the handler succeeded (a copy of the same id waiting on it is then a duplicate). */
type Outcome = 'handled' | 'done' | 'abandoned';

const log = logger('events:consumer');

const GAVE_UP = Symbol('stopGraceMs ran out');

export class Subscription {
  readonly stats: SubscriptionStats = {
    handled: 0,
    filtered: 0,
    duplicates: 0,
    retried: 0,
    deadLettered: 0,
    expired: 0,
    deadLetterRefused: 0,
  };
  private readonly consumer: Consumer;
  private readonly dlq: EventProducer;
  private readonly filter?: (e: ReceivedEvent) => boolean;
  private readonly dedupe?: DedupeWindow;
  /**
   * With dedupe, the ids whose handler is running (at most one per partition handled at once): a copy of the
   * same id on another partition waits for that outcome instead of reaching the handler beside it.
   */
  private readonly inFlight = new Map<string, Promise<Outcome>>();
  private readonly abort = new AbortController();
  private readonly deadLetterTopicFor: (topic: string) => string;
  private joinedOnce!: Promise<void>;
  private stopping?: Promise<void>;

  /** Use `subscribe()`. */
  constructor(
    private readonly o: CompiledSubscribeOptions,
    kafka: Kafka,
  ) {
    this.filter = compileFilter(o.filter);
    if (o.dedupe)
      this.dedupe = new DedupeWindow(o.dedupe === true ? o.dedupeWindowSize : o.dedupe.windowSize);
    const d = o.deadLetterTopic;
    this.deadLetterTopicFor = d === undefined ? defaultDeadLetterTopic : typeof d === 'string' ? () => d : d;
    this.consumer = kafka.consumer({
      groupId: o.group,
      sessionTimeout: o.sessionTimeoutMs,
      heartbeatInterval: o.heartbeatIntervalMs,
      rebalanceTimeout: o.rebalanceTimeoutMs,
      maxBytesPerPartition: o.maxBytesPerPartition,
      maxWaitTimeInMs: o.maxWaitTimeMs,
      allowAutoTopicCreation: o.allowAutoTopicCreation ?? true,
      retry: {
        retries: o.requestRetries,
        initialRetryTime: o.initialRetryTimeMs,
        maxRetryTime: o.maxRetryTimeMs,
      },
    });
    this.dlq = new EventProducer({
      ...clientOptions(o),
      clientId: `${o.clientId}-dlq`,
      allowAutoTopicCreation: o.allowAutoTopicCreation,
    });
    this.joinedOnce = new Promise((resolve, reject) => {
      const offJoin = this.consumer.on(this.consumer.events.GROUP_JOIN, () => {
        offJoin();
        offCrash();
        resolve();
      });
      // A crash kafkajs will not recover from (e.g. not authorised for the group) before the first join: the
      // subscription is dead, so joined() says so instead of waiting for ever.
      const offCrash = this.consumer.on(this.consumer.events.CRASH, ({ payload }) => {
        if (payload.restart) return;
        offJoin();
        offCrash();
        reject(
          new KafkaUnavailableError(
            `the consumer of group ${o.group} stopped before it joined and will not restart: ${payload.error?.message}`,
            { details: { group: o.group }, cause: payload.error },
          ),
        );
      });
    });
    this.joinedOnce.catch(() => undefined); // the crash is reported (log, onError) whether or not joined() is awaited
    this.consumer.on(this.consumer.events.CRASH, ({ payload }) => {
      log.error('consumer crashed', { group: o.group, err: payload.error, restart: payload.restart });
      o.onError?.(payload.error);
    });
  }

  get group(): string {
    return this.o.group;
  }

  get topics(): readonly string[] {
    return this.o.topics;
  }

  /**
   * How far this subscription's group is behind on its topics: per partition, the events it has not committed
   * (see consumerLag). Asks Kafka on a connection of its own; works before, during and after the subscription runs.
   */
  lag(): Promise<ConsumerLag> {
    return consumerLag({ ...clientOptions(this.o), group: this.o.group, topics: this.o.topics });
  }

  /** The dead-letter topic used for events of `topic`. */
  deadLetterTopic(topic: string): string {
    return this.deadLetterTopicFor(topic);
  }

  /** Aborted once `stop()` began (for owners that keep track of their subscriptions). */
  get stopSignal(): AbortSignal {
    return this.abort.signal;
  }

  /** Resolves once this consumer has joined its group (and got its partitions) the first time. */
  joined(): Promise<void> {
    return this.joinedOnce;
  }

  /** @internal started by subscribe() */
  async start(): Promise<void> {
    const o = this.o;
    if (o.allowAutoTopicCreation === false) {
      // Before the dead-letter topics are made for it, and before kafkajs waits out its retries on it.
      const missing = await missingTopics(clientOptions(o), o.topics);
      if (missing.length > 0) {
        throw new TopicUnavailableError(
          `subscribe: the brokers have no topic ${missing.join(', ')} (allowAutoTopicCreation is off): create it first`,
          { details: { group: o.group, topics: missing.join(',') } },
        );
      }
    }
    if (o.createDeadLetterTopics) {
      await ensureTopics(clientOptions(o), o.topics.map(this.deadLetterTopicFor));
    }
    await this.consumer.connect();
    await this.subscribeTopics();
    await this.consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: o.concurrency,
      eachBatch: (payload) => this.eachBatch(payload),
    });
    const { handler: _h, filter, onError: _e, ...config } = o;
    log.info('subscribed', { ...loggableClientOptions(config), filter: filter ? typeof filter : undefined });
  }

  /**
   * kafkajs fails a subscription at once when a topic is missing from the metadata — also one that very request
   * made the broker create (auto-create on), which the next request finds. Asked again with the client's retry
   * schedule; a topic still missing then fails with TopicUnavailableError naming the topics.
   */
  private async subscribeTopics(): Promise<void> {
    const o = this.o;
    const schedule = { initialMs: o.initialRetryTimeMs, maxMs: o.maxRetryTimeMs, multiplier: 2 };
    for (let attempt = 1; ; attempt++) {
      try {
        await this.consumer.subscribe({ topics: o.topics, fromBeginning: o.fromBeginning });
        return;
      } catch (err) {
        if (toDeliveryError(err, {}).reason !== 'topic-unavailable') throw err;
        if (attempt > o.requestRetries) {
          const missing = await missingTopics(clientOptions(o), o.topics).catch(() => []);
          const topics = (missing.length > 0 ? missing : o.topics).join(', ');
          throw new TopicUnavailableError(
            `subscribe: the brokers have no topic ${topics}, or refuse this client access to it ` +
              `(${(err as Error).message}): create it or grant access`,
            { details: { group: o.group, topics }, cause: err },
          );
        }
        await new Promise((r) => setTimeout(r, backoffMs(attempt, schedule)));
      }
    }
  }

  /**
   * Finishes in-flight handlers (abandoning those still running after `stopGraceMs`), commits their offsets,
   * leaves the group, disconnects. Idempotent.
   */
  stop(): Promise<void> {
    if (!this.stopping) {
      this.abort.abort();
      const grace = setTimeout(() => {
        this.graceOver = true;
        for (const give of this.giveUps) give();
        this.giveUps.clear();
      }, this.o.stopGraceMs);
      this.stopping = (async () => {
        // Offsets already queued reach Kafka before the group is left; a batch still running when stop began
        // commits inline (see eachBatch), before kafkajs leaves the group.
        await this.commits;
        await this.consumer.disconnect().catch((err) => log.warn('consumer disconnect failed', { err }));
        clearTimeout(grace);
        await this.dlq.stop();
      })();
    }
    return this.stopping;
  }

  /** The waits for handlers running now, each ended by stop's grace running out (then not waited for). */
  private readonly giveUps = new Set<() => void>();
  private graceOver = false;
  /** Events given up on by stop: what their handlers do afterwards is not counted or remembered. */
  private readonly abandonedEvents = new WeakSet<ReceivedEvent>();

  /** `r`, or GAVE_UP once stop's grace has run out; holds nothing once `r` settles. */
  private orGiveUp(r: Promise<Outcome>): Promise<Outcome | typeof GAVE_UP> {
    if (this.graceOver) return Promise.resolve(GAVE_UP);
    return new Promise((resolve, reject) => {
      const give = () => resolve(GAVE_UP);
      this.giveUps.add(give);
      r.then(
        (v) => {
          this.giveUps.delete(give);
          resolve(v);
        },
        (err: unknown) => {
          this.giveUps.delete(give);
          reject(err);
        },
      );
    });
  }

  /** The chain of background offset commits, in order. */
  private commits: Promise<void> = Promise.resolve();

  private async eachBatch(p: EachBatchPayload): Promise<void> {
    const { topic, partition, messages } = p.batch;
    const beatEveryMs = this.o.heartbeatIntervalMs;
    let lastBeat = Date.now();
    let last: string | undefined;
    for (let i = 0; i < messages.length; i++) {
      if (!p.isRunning() || p.isStale() || this.abort.signal.aborted) break;
      const event = new ReceivedEvent(topic, partition, messages[i]);
      let outcome: Outcome;
      try {
        // A handler that finished synchronously costs no promise here (the common, fast case).
        const r = this.process(event, p);
        const settled = typeof r === 'string' ? r : await this.orGiveUp(r);
        outcome = settled === GAVE_UP ? 'abandoned' : settled;
        if (settled === GAVE_UP) {
          this.abandonedEvents.add(event);
          log.warn('handler still running after stopGraceMs; its event is left uncommitted', {
            group: this.o.group,
            topic,
            partition,
            offset: event.offset,
            id: event.id,
          });
        }
      } catch (err) {
        // DMTP's own code failed on this record (what a handler throws never gets here). Escaping eachBatch,
        // the error would stop the consumer for good, and a restart would meet the same record again.
        outcome = await this.unexpected(event, err, p);
      }
      if (outcome === 'abandoned') break;
      last = messages[i].offset;
      if (Date.now() - lastBeat >= beatEveryMs) {
        p.resolveOffset(last);
        await this.beat(p);
        lastBeat = Date.now();
      }
    }
    if (last !== undefined) {
      p.resolveOffset(last);
      const offsets = p.uncommittedOffsets();
      // Committed in the background, in order, so the next fetch does not wait for this round trip (it was
      // most of the commit-to-handler latency). Still only offsets of finished events; a commit lost to a crash
      // or rebalance means a redelivery, never a loss. When stopping, commit before kafkajs leaves the group.
      this.commits = this.commits
        .then(() => p.commitOffsetsIfNecessary(offsets))
        .catch((err) =>
          log.warn('offset commit failed; those events will be redelivered', { err, topic, partition }),
        );
      if (this.abort.signal.aborted || !p.isRunning()) await this.commits;
    }
  }

  private process(event: ReceivedEvent, p: EachBatchPayload): Outcome | Promise<Outcome> {
    const redriveFor = event.header(REDRIVE_HEADERS.group);
    if (redriveFor !== undefined && redriveFor !== this.o.group) {
      // A dead-letter copy sent back for the group that gave up on it: this group handled the event before.
      this.stats.filtered++;
      return 'done';
    }
    if (this.filter) {
      let match: boolean;
      try {
        match = this.filter(event);
      } catch (err) {
        return this.deadLetter(event, 'handler-failed', `filter threw: ${describeError(err)}`, 0, p);
      }
      if (!match) {
        this.stats.filtered++;
        return 'done';
      }
    }
    return this.dedupe ? this.deduped(event, p, this.dedupe) : this.deliver(event, p);
  }

  /** An event DMTP itself failed on: dead-lettered like one whose handler failed, so the partition moves on. */
  private unexpected(event: ReceivedEvent, err: unknown, p: EachBatchPayload): Promise<Outcome> {
    const { topic, partition, offset } = event;
    log.error('processing an event failed unexpectedly; dead-lettering it', {
      topic,
      partition,
      offset,
      err,
    });
    return this.deadLetter(event, 'handler-failed', `processing failed: ${describeError(err)}`, 0, p);
  }

  /**
   * Drops an id handled recently; a copy of an id still in flight (same id on another partition, handled at
   * once with `concurrency` > 1) waits for the first copy: dropped if it was handled, handled itself if the
   * first failed (dead-lettered) or was abandoned.
   */
  private deduped(
    event: ReceivedEvent,
    p: EachBatchPayload,
    dedupe: DedupeWindow,
  ): Outcome | Promise<Outcome> {
    const id = event.id;
    if (dedupe.has(id)) {
      this.stats.duplicates++;
      return 'done';
    }
    const first = this.inFlight.get(id);
    if (first) {
      // A first copy that failed unexpectedly is its own batch's trouble: this copy is handled itself.
      return first
        .catch((): Outcome => 'done')
        .then((outcome) => {
          if (outcome === 'handled') {
            this.stats.duplicates++;
            return 'done';
          }
          if (this.abort.signal.aborted || !p.isRunning() || p.isStale()) return 'abandoned';
          return this.deduped(event, p, dedupe);
        });
    }
    const r = this.deliver(event, p);
    // Finished synchronously: nothing else ran meanwhile, so no other copy can have seen it in flight.
    if (typeof r === 'string') return r;
    const tracked: Promise<Outcome> = r.finally(() => {
      if (this.inFlight.get(id) === tracked) this.inFlight.delete(id);
    });
    this.inFlight.set(id, tracked);
    return tracked;
  }

  /** Max age → handler (+ retries) → dead-letter. */
  private deliver(event: ReceivedEvent, p: EachBatchPayload): Outcome | Promise<Outcome> {
    const o = this.o;
    if (o.maxAgeMs !== undefined) {
      const ageMs = Date.now() - event.publishedAtMs;
      if (ageMs > o.maxAgeMs) {
        this.stats.expired++;
        return this.deadLetter(event, 'expired', `expired: ${ageMs} ms old, maxAgeMs ${o.maxAgeMs}`, 0, p);
      }
    }
    // The first attempt runs synchronously as far as the handler does; retries (and async handlers) go on in
    // `attempts`.
    let res: unknown;
    try {
      res = this.attempt(event, 1);
    } catch (err) {
      return this.attempts(event, p, 1, err);
    }
    if (res !== null && typeof res === 'object' && typeof (res as PromiseLike<unknown>).then === 'function') {
      return Promise.resolve(res).then(
        () => this.handled(event),
        (err: unknown) => this.attempts(event, p, 1, err),
      );
    }
    return this.handled(event);
  }

  /** One call of the handler (in its span when `tracing`). */
  private attempt(event: ReceivedEvent, attempt: number): unknown {
    const o = this.o;
    const call = () => o.handler(event, { attempt, group: o.group, signal: this.abort.signal });
    return o.tracing ? tracedAttempt(event, o.group, attempt, call) : call();
  }

  private handled(event: ReceivedEvent): Outcome {
    if (this.abandonedEvents.has(event)) return 'abandoned'; // stop gave up on it: left uncommitted, not counted
    this.stats.handled++;
    this.dedupe?.add(event.id);
    return 'handled';
  }

  /** After attempt `failed` threw `err`: retries with backoff while retries are left, then the dead-letter topic. */
  private async attempts(
    event: ReceivedEvent,
    p: EachBatchPayload,
    failed: number,
    err: unknown,
  ): Promise<Outcome> {
    const o = this.o;
    for (let attempt = failed + 1; ; attempt++) {
      if (attempt - 1 > o.retries) {
        // Stopping, or the partition moved: the handler may have given up for that (its signal says so); the
        // event is redelivered, never dead-lettered for it.
        if (this.abort.signal.aborted || !p.isRunning() || p.isStale()) return 'abandoned';
        log.warn('handler failed, dead-lettering', {
          group: o.group,
          id: event.id,
          attempts: attempt - 1,
          err,
        });
        return this.deadLetter(event, 'handler-failed', describeError(err), attempt - 1, p);
      }
      if (this.abort.signal.aborted || this.abandonedEvents.has(event)) return 'abandoned';
      this.stats.retried++;
      if (!(await this.pause(backoffMs(attempt - 1, o.backoff), p))) return 'abandoned';
      try {
        await this.attempt(event, attempt);
        return this.handled(event);
      } catch (e) {
        err = e;
      }
    }
  }

  private async deadLetter(
    event: ReceivedEvent,
    kind: DeadLetterKind,
    reason: string,
    attempts: number,
    p: EachBatchPayload,
  ): Promise<Outcome> {
    const topic = this.deadLetterTopicFor(event.topic);
    let record: DeadLetterRecord | undefined;
    for (let attempt = 1; ; attempt++) {
      let failure: unknown;
      try {
        record ??= deadLetterMessage(event, kind, reason, this.o.group, attempts);
        const report = await this.dlq.publishRecord(topic, record);
        if (report.status === 'sent') {
          this.stats.deadLettered++;
          // Not remembered as handled: a replay of the dead-letter copy (same id) must reach the handler. A
          // redelivery of the original before its offset is committed may be dead-lettered twice instead.
          return 'done';
        }
        if (report.reason === 'too-large' && record.value !== null) {
          // With the dead-letter headers the copy no longer fits: write it without the value, which stays in
          // the source topic at the offset the headers name. Asking again would never change the answer.
          log.warn('dead-letter copy too large; writing it without its value', { topic, id: event.id });
          record = withoutValue(record);
          continue;
        }
        if (report.reason === 'too-large' && !(DEAD_LETTER_HEADERS.headersOmitted in record.headers)) {
          // Still too large (huge application headers or key): a stub with the dead-letter headers alone.
          log.warn('dead-letter copy too large without its value; writing it without its headers', {
            topic,
            id: event.id,
          });
          record = headersOmitted(record);
          continue;
        }
        if (!report.retriable) {
          // Refused for good (asking again would get the same answer): the partition must not wait for ever.
          // The event is given up on, visibly; the original stays at its topic, partition and offset.
          this.stats.deadLetterRefused++;
          log.error('dead-letter copy refused for good; the event is skipped', {
            topic,
            source: event.topic,
            partition: event.partition,
            offset: event.offset,
            id: event.id,
            reason: report.reason,
            err: report.error,
          });
          return 'done';
        }
        failure = report.reason;
      } catch (err) {
        // DMTP's own code failed on this record: waiting and trying again beats a consumer stopped for good.
        failure = err;
      }
      // Not committing is the only safe move: the partition waits here, visibly, until the write works.
      log.error('dead-letter write failed; retrying', {
        topic,
        partition: event.partition,
        offset: event.offset,
        reason: failure,
        attempt,
      });
      if (!(await this.pause(backoffMs(attempt, this.o.backoff), p))) return 'abandoned';
    }
  }

  /** Waits `ms` while heartbeating; false if the subscription stopped or lost the partition meanwhile. */
  private async pause(ms: number, p: EachBatchPayload): Promise<boolean> {
    const until = Date.now() + ms;
    const signal = this.abort.signal;
    while (!signal.aborted && p.isRunning() && !p.isStale()) {
      const left = until - Date.now();
      if (left <= 0) return true;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          signal.removeEventListener('abort', done);
          resolve();
        };
        const timer = setTimeout(done, Math.min(left, this.o.heartbeatIntervalMs));
        signal.addEventListener('abort', done);
      });
      try {
        await this.beat(p);
      } catch {
        return false; // a rebalance: leave the event uncommitted, kafkajs rejoins on its next request
      }
    }
    return false;
  }

  /**
   * Heartbeats; when the group is rebalancing, first commits the events already finished (as kafkajs does
   * with autoCommit), so the partition's next owner does not redo them, then lets the error through.
   */
  private async beat(p: EachBatchPayload): Promise<void> {
    try {
      await p.heartbeat();
    } catch (err) {
      await p.commitOffsetsIfNecessary(p.uncommittedOffsets()).catch(() => undefined);
      throw err;
    }
  }
}

/** Starts a subscription; resolves once the consumer runs (see `joined()` for the first group join). */
export async function subscribe(options: SubscribeOptions): Promise<Subscription> {
  const o = compileSubscribeOptions(options);
  const sub = new Subscription(o, createKafka(clientOptions(o)));
  for (const t of o.topics) validateTopic(sub.deadLetterTopic(t));
  try {
    await sub.start();
  } catch (err) {
    await sub.stop();
    throw err instanceof DmtpError ? err : toDeliveryError(err, { group: o.group });
  }
  return sub;
}
