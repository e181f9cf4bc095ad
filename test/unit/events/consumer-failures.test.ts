/**
 * A subscription's failure paths, driven through its batch handler with a FAKE kafkajs consumer and a fake
 * dead-letter producer (pure logic, no broker): what a handler throws never breaks the loop, a stop during the
 * last attempt redelivers instead of dead-lettering, and a dead-letter copy too large to write is written
 * without its value. The broker paths are in test/integration/events.
 */
import { strict as assert } from 'node:assert';
import type { EachBatchPayload, KafkaMessage } from 'kafkajs';
import {
  compileSubscribeOptions,
  CONTENT_TYPES,
  DEAD_LETTER_HEADERS,
  eventBytes,
  HEADERS,
  Subscription,
  type SubscribeOptions,
} from '../../../events';
import { EventRefusedError, EventTooLargeError } from '../../../events/errors';

interface Harness {
  sub: Subscription;
  written: { key: Buffer | null; value: Buffer | null; headers: Record<string, string> }[];
  offsets: string[];
  run: (messages: KafkaMessage[], partition?: number) => Promise<void>;
}

function harness(options: Partial<SubscribeOptions>, dlqLimit = Infinity): Harness {
  const consumer = {
    events: { GROUP_JOIN: 'j', CRASH: 'c' },
    on: () => () => undefined,
    disconnect: async () => {},
  };
  const o = compileSubscribeOptions({
    brokers: ['fake:9092'],
    topics: ['orders'],
    group: 'g',
    handler: async () => undefined,
    backoff: { initialMs: 1, maxMs: 2 },
    ...options,
  });
  const sub = new Subscription(o, { consumer: () => consumer } as never);
  const written: Harness['written'] = [];
  const offsets: string[] = [];
  (sub as unknown as { dlq: { publishRecord: unknown } }).dlq.publishRecord = async (
    topic: string,
    r: { key: Buffer | null; value: Buffer | null; headers: Record<string, string> },
  ) => {
    if (eventBytes(r.key, r.value, r.headers) > dlqLimit) {
      const error = new EventTooLargeError('too large', { details: { topic } });
      return { status: 'failed', id: '', topic, reason: 'too-large', retriable: false, error };
    }
    written.push(r);
    return { status: 'sent', id: '', topic, partition: 0, offset: '0' };
  };
  const run = (messages: KafkaMessage[], partition = 0) =>
    (sub as unknown as { eachBatch: (p: EachBatchPayload) => Promise<void> }).eachBatch({
      batch: { topic: 'orders', partition, messages },
      isRunning: () => true,
      isStale: () => false,
      heartbeat: async () => undefined,
      resolveOffset: (offset: string) => offsets.push(offset),
      uncommittedOffsets: () => ({ topics: [] }),
      commitOffsetsIfNecessary: async () => undefined,
    } as unknown as EachBatchPayload);
  return { sub, written, offsets, run };
}

function message(offset: string, value = Buffer.from('{}'), id = `ev-${offset}`): KafkaMessage {
  const headers = {
    [HEADERS.id]: id,
    [HEADERS.publishedAtMs]: String(Date.now()),
    [HEADERS.contentType]: CONTENT_TYPES.bytes,
  };
  return { offset, key: Buffer.from('k'), value, headers, timestamp: String(Date.now()) } as never;
}

describe('Subscription failure paths (fake kafkajs consumer)', () => {
  const subs: Subscription[] = [];
  afterEach(async () => {
    for (const s of subs.splice(0)) await s.stop();
  });

  it('dead-letters an event whose handler throws something no logger can serialise', async () => {
    const circular: Record<string, unknown> = { code: 'E' };
    circular.self = circular;
    for (const thrown of [10n, circular, Object.create(null) as object]) {
      const h = harness({
        retries: 1,
        handler: () => {
          throw thrown;
        },
      });
      subs.push(h.sub);
      await h.run([message('0')]);
      assert.equal(h.written.length, 1, `dead-lettered (${typeof thrown})`);
      assert.deepEqual(h.offsets, ['0']);
    }
  });

  it('a replay of a dead-lettered event (same id) reaches the handler: dedupe remembers only handled events', async () => {
    // Before, the dead-lettered id sat in the dedupe window, so an operator's replay after fixing the downstream
    // was dropped as a duplicate, its offset committed, the handler never called.
    let down = true;
    const handled: string[] = [];
    const h = harness({
      retries: 1,
      dedupe: true,
      handler: (e) => {
        if (down) throw new Error('downstream is down');
        handled.push(e.id);
      },
    });
    subs.push(h.sub);
    await h.run([message('0')]);
    assert.equal(h.written.length, 1, 'dead-lettered');
    down = false;
    await h.run([message('1', Buffer.from('{}'), 'ev-0')]); // the replay: the dead-letter copy's id
    assert.deepEqual(handled, ['ev-0']);
    await h.run([message('2', Buffer.from('{}'), 'ev-0')]); // handled once: now a duplicate
    assert.deepEqual(handled, ['ev-0']);
    assert.deepEqual(h.offsets, ['0', '1', '2']);
  });

  it('with concurrency, a copy of an id in flight on another partition waits for it and is dropped once it was handled', async () => {
    // Before, both copies passed the dedupe check (the id is added only after its handler) and both were handled.
    const handled: string[] = [];
    const h = harness({
      concurrency: 2,
      dedupe: true,
      handler: async (e) => {
        await new Promise((r) => setTimeout(r, 20));
        handled.push(`${e.id}@${e.partition}`);
      },
    });
    subs.push(h.sub);
    await Promise.all([
      h.run([message('0', undefined, 'x:0')], 0),
      h.run([message('0', undefined, 'x:0')], 1),
    ]);
    assert.deepEqual(handled, ['x:0@0']);
    assert.equal(h.sub.stats.duplicates, 1);
    assert.deepEqual(h.offsets, ['0', '0'], 'both copies are finished, so both offsets move on');
  });

  it('with concurrency, a copy of an id whose first copy was dead-lettered meanwhile is handled itself', async () => {
    let calls = 0;
    const h = harness({
      concurrency: 2,
      dedupe: true,
      retries: 0,
      handler: async () => {
        await new Promise((r) => setTimeout(r, 20));
        if (++calls === 1) throw new Error('first copy fails');
      },
    });
    subs.push(h.sub);
    await Promise.all([
      h.run([message('0', undefined, 'x:0')], 0),
      h.run([message('0', undefined, 'x:0')], 1),
    ]);
    assert.equal(calls, 2, 'the second copy reached the handler after the first failed');
    assert.equal(h.written.length, 1, 'the first copy was dead-lettered');
    assert.equal(h.sub.stats.handled, 1);
    assert.equal(h.sub.stats.duplicates, 0);
  });

  it('dead-letters an event DMTP itself fails on instead of letting the error stop the consumer', async () => {
    // Before, such a throw escaped eachBatch: kafkajs stopped the consumer for good (restart: false).
    const handled: string[] = [];
    const h = harness({ dedupe: true, handler: (e) => void handled.push(e.id) });
    subs.push(h.sub);
    const dedupe = (h.sub as unknown as { dedupe: { has: (id: string) => boolean } }).dedupe;
    const has = dedupe.has.bind(dedupe);
    dedupe.has = (id) => {
      if (id === 'ev-0') throw new TypeError('a bug in DMTP');
      return has(id);
    };
    await h.run([message('0'), message('1')]);
    assert.equal(h.written.length, 1, 'the event it failed on was dead-lettered');
    assert.equal(
      h.written[0].headers[DEAD_LETTER_HEADERS.reason],
      'processing failed: TypeError: a bug in DMTP',
    );
    assert.equal(h.written[0].headers[DEAD_LETTER_HEADERS.offset], '0');
    assert.deepEqual(handled, ['ev-1'], 'the next event was handled');
    assert.deepEqual(h.offsets, ['1'], 'the batch finished: resolved up to its last event');
  });

  it('retries a dead-letter write that throws, with backoff, rather than stop the consumer', async () => {
    const h = harness({
      retries: 0,
      handler: () => {
        throw new Error('handler failed');
      },
    });
    subs.push(h.sub);
    const dlq = (h.sub as unknown as { dlq: { publishRecord: (...a: unknown[]) => Promise<unknown> } }).dlq;
    const write = dlq.publishRecord;
    let throws = 2;
    dlq.publishRecord = (...a) =>
      throws-- > 0 ? Promise.reject(new TypeError('a bug in DMTP')) : write(...a);
    await h.run([message('0')]);
    assert.equal(throws, -1, 'asked again after each throw');
    assert.equal(h.written.length, 1);
    assert.deepEqual(h.offsets, ['0']);
  });

  it('a stop during the last attempt redelivers the event: not dead-lettered, offset not resolved', async () => {
    const h = harness({
      retries: 0,
      handler: (_e, ctx) =>
        new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(new Error('stopping')))),
    });
    const done = h.run([message('0')]);
    await new Promise((r) => setTimeout(r, 20));
    await h.sub.stop();
    await done;
    assert.deepEqual(h.written, []);
    assert.deepEqual(h.offsets, []);
  });

  it('writes a dead-letter copy too large with its headers without its value, and moves on', async () => {
    const value = Buffer.alloc(2_000, 1);
    const h = harness(
      {
        retries: 0,
        handler: () => {
          throw new Error('x'.repeat(900));
        },
      },
      1_000,
    );
    subs.push(h.sub);
    await h.run([message('0', value)]);
    assert.equal(h.written.length, 1);
    assert.equal(h.written[0].value, null);
    assert.equal(h.written[0].headers[DEAD_LETTER_HEADERS.valueOmitted], '2000');
    assert.equal(h.written[0].headers[DEAD_LETTER_HEADERS.offset], '0', 'where the original still is');
    assert.ok(h.written[0].headers[DEAD_LETTER_HEADERS.reason].length <= 201);
    assert.deepEqual(h.offsets, ['0']);
  });

  it('writes a copy too large even without its value as a stub: dead-letter headers, id, key start', async () => {
    // Before, the copy without value was refused again and again: the partition waited for ever.
    const h = harness(
      {
        retries: 0,
        handler: () => {
          throw new Error('no');
        },
      },
      3_000,
    );
    subs.push(h.sub);
    const m = message('0');
    m.key = Buffer.alloc(5_000, 'k');
    m.headers = { ...m.headers, big: 'h'.repeat(5_000), type: 'T' };
    await h.run([m, message('1')]);
    assert.equal(h.written.length, 2, 'the stub, then the next event (its handler fails too)');
    const [stub] = h.written;
    assert.equal(stub.value, null);
    assert.equal(stub.key?.length, 1_024);
    assert.equal(stub.headers[DEAD_LETTER_HEADERS.keyTruncated], '5000');
    assert.equal(stub.headers[HEADERS.id], 'ev-0');
    assert.equal(stub.headers[DEAD_LETTER_HEADERS.offset], '0');
    assert.equal(stub.headers[DEAD_LETTER_HEADERS.valueOmitted], '2');
    assert.ok(Number(stub.headers[DEAD_LETTER_HEADERS.headersOmitted]) > 5_000);
    assert.equal(stub.headers.big, undefined);
    assert.equal(stub.headers.type, undefined, 'only the dead-letter headers and the id');
    assert.deepEqual(h.offsets, ['1']);
  });

  it('gives up on a dead-letter copy the broker refuses for good, counted, and moves on', async () => {
    const h = harness({
      retries: 0,
      handler: () => {
        throw new Error('no');
      },
    });
    subs.push(h.sub);
    let asked = 0;
    (h.sub as unknown as { dlq: { publishRecord: unknown } }).dlq.publishRecord = async (topic: string) => {
      asked++;
      const error = new EventRefusedError('the broker refused the event (INVALID_RECORD)', {
        details: { topic },
      });
      return { status: 'failed', id: '', topic, reason: 'refused', retriable: false, error };
    };
    await h.run([message('0'), message('1')]);
    assert.equal(asked, 2, 'each asked once');
    assert.equal(h.sub.stats.deadLetterRefused, 2);
    assert.equal(h.sub.stats.deadLettered, 0);
    assert.deepEqual(h.offsets, ['1']);
  });

  it('refuses a backoff that would never run out', () => {
    for (const backoff of [{ initialMs: NaN }, { initialMs: 0 }, { maxMs: Infinity }, { multiplier: 0.5 }]) {
      assert.throws(
        () =>
          compileSubscribeOptions({
            brokers: ['fake:9092'],
            topics: ['orders'],
            group: 'g',
            handler: async () => undefined,
            backoff,
          }),
        /backoff needs/,
      );
    }
    const o = compileSubscribeOptions({
      brokers: ['fake:9092'],
      topics: ['orders'],
      group: 'g',
      handler: async () => undefined,
      backoff: { initialMs: undefined },
    });
    assert.equal(o.backoff.initialMs, 100, 'an option given as undefined keeps its default');
  });

  it('joined() rejects when the consumer crashes before its first join and kafkajs will not restart it', async () => {
    // Before, joined() waited for ever: the subscription was dead but for a log line and onError.
    type Listener = (e: { payload: { error: Error; restart: boolean } }) => void;
    const handlers: { event: string; fn: Listener }[] = [];
    const consumer = {
      events: { GROUP_JOIN: 'join', CRASH: 'crash' },
      on: (event: string, fn: Listener) => {
        const h = { event, fn };
        handlers.push(h);
        return () => handlers.splice(handlers.indexOf(h), 1);
      },
      disconnect: async () => {},
    };
    const crash = (error: Error, restart: boolean) => {
      for (const h of handlers.filter((x) => x.event === 'crash')) h.fn({ payload: { error, restart } });
    };
    const o = compileSubscribeOptions({
      brokers: ['fake:9092'],
      topics: ['orders'],
      group: 'g',
      handler: async () => undefined,
    });
    const sub = new Subscription(o, { consumer: () => consumer } as never);
    subs.push(sub);
    crash(new Error('retrying'), true);
    crash(new Error('Not authorized to access group'), false);
    await assert.rejects(
      sub.joined(),
      /group g stopped before it joined and will not restart: Not authorized/,
    );
  });
});
