// Many deadlines (the coordinator's ACTIVE transactions', a participant's branches') in one queue with one timer: pure logic on a ManualClock;
// the async context deadlines fire in, on real timers.
import { strict as assert } from 'node:assert';
import { AsyncLocalStorage } from 'node:async_hooks';
import { context, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { ManualClock, systemClock } from '../../../common';
import { DEFAULT_PER_TURN, DeadlineQueue } from '../../../common/deadline-queue';
import { TimerSet } from '../../../coordinator/timer-set';

describe('common/DeadlineQueue', () => {
  let clock: ManualClock;
  let timers: TimerSet;
  let fired: string[];
  let q: DeadlineQueue<string>;
  beforeEach(() => {
    clock = new ManualClock(1_000);
    timers = new TimerSet(clock);
    fired = [];
    q = new DeadlineQueue<string>(clock, timers, (x) => void fired.push(`${x}@${clock.now()}`));
  });

  it('fires each entry when the clock reaches its time, in time order, ties in the order added, with one timer', () => {
    q.add(1_300, 'c');
    q.add(1_100, 'a');
    q.add(1_200, 'b1');
    q.add(1_200, 'b2');
    q.add(5_000, 'late');
    assert.equal(timers.size, 1, 'one timer for all of them');
    clock.advance(99);
    assert.deepEqual(fired, []);
    clock.advance(1);
    assert.deepEqual(fired, ['a@1100']);
    clock.advance(200);
    assert.deepEqual(fired, ['a@1100', 'b1@1200', 'b2@1200', 'c@1300']);
    assert.equal(q.size, 1);
    assert.equal(timers.size, 1, 'armed for the last one');
  });

  it('a cancelled entry leaves the heap at once and never fires; the others still do', () => {
    const entries = Array.from({ length: 50 }, (_, i) => q.add(1_000 + 10 * (i + 1), `t${i}`));
    for (let i = 0; i < 50; i += 2) entries[i].cancel(); // the earliest among them
    entries[0].cancel(); // twice is fine
    assert.equal(q.size, 25);
    clock.advance(1_000);
    assert.deepEqual(
      fired.map((f) => f.split('@')[0]),
      Array.from({ length: 25 }, (_, i) => `t${2 * i + 1}`),
    );
    assert.equal(q.size, 0);
    assert.equal(timers.size, 0, 'no timer left when nothing waits');
  });

  it('an entry added for an earlier time than the armed one re-arms; one already past fires on the next turn', () => {
    q.add(2_000, 'far');
    q.add(1_050, 'near');
    clock.advance(50);
    assert.deepEqual(fired, ['near@1050']);
    q.add(500, 'past');
    clock.advance(0);
    assert.deepEqual(fired, ['near@1050', 'past@1050']);
  });

  it("one entry's handler throwing does not keep the later ones from firing", () => {
    const q2 = new DeadlineQueue<string>(clock, timers, (x) => {
      if (x === 'bad') throw new Error('boom');
      fired.push(x);
    });
    q2.add(1_010, 'bad');
    q2.add(1_010, 'good');
    q2.add(1_020, 'later');
    clock.advance(20);
    assert.deepEqual(fired, ['good', 'later']);
  });

  it("the TimerSet's cancelAll() (a stop) disarms it", () => {
    q.add(1_100, 'x');
    timers.cancelAll();
    q.add(1_200, 'y');
    clock.advance(1_000);
    assert.deepEqual(fired, []);
  });

  it('stays a heap when entries leave from the middle (random times, random cancels, adds from inside due)', () => {
    let seed = 7;
    const rnd = (n: number) => {
      // mulberry32: a small PRNG whose low bits are random too
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) % n;
    };
    let adding = true;
    const expected = new Map<string, number>();
    const got = new Map<string, number>();
    const handles = new Map<string, { cancel(): void }>();
    let n = 0;
    const cancel = (id: string) => {
      if (got.has(id) || !expected.has(id)) return;
      handles.get(id)!.cancel();
      expected.delete(id);
    };
    const add = (at: number) => {
      const id = `e${n++}`;
      expected.set(id, Math.max(at, clock.now()));
      handles.set(id, q3.add(at, id));
    };
    const q3: DeadlineQueue<string> = new DeadlineQueue<string>(clock, timers, (id) => {
      got.set(id, clock.now());
      if (adding && rnd(4) === 0) add(clock.now() + rnd(50)); // a deadline handler that begins another transaction
      if (rnd(3) === 0) cancel(`e${rnd(n)}`);
    });
    for (let round = 0; round < 200; round++) {
      for (let i = 0; i < 5; i++) add(clock.now() + rnd(500));
      const victim = `e${rnd(n)}`;
      cancel(victim);
      clock.advance(rnd(30));
    }
    adding = false;
    clock.advance(10_000);
    assert.ok(got.size > 500, `${got.size} fired`);
    assert.deepEqual(new Map([...got].sort()), new Map([...expected].sort()), 'each fired once, at its time');
    assert.equal(q3.size, 0);
  });

  it('fires at most perTurn entries in one turn: what waited for the loop runs between the batches', () => {
    // Other work due at the same time (a reply, a keep-alive) stands for the I/O a long turn would hold back.
    const log: string[] = [];
    const batched = new DeadlineQueue<number>(
      clock,
      timers,
      (i) => {
        log.push(`d${i}`);
        if (i === 0) clock.setTimeout(() => log.push('io'), 0);
      },
      DEFAULT_PER_TURN,
    );
    const n = 2 * DEFAULT_PER_TURN + 10;
    for (let i = 0; i < n; i++) batched.add(1_100, i);
    clock.advance(100);
    assert.equal(log.length, n + 1, 'every deadline fired, at its time');
    assert.equal(log.indexOf('io'), DEFAULT_PER_TURN, 'the other work ran right after the first batch');
    assert.deepEqual(
      log.filter((x) => x !== 'io'),
      Array.from({ length: n }, (_, i) => `d${i}`),
      'in the order added',
    );
    assert.equal(batched.size, 0);
    assert.equal(timers.size, 0);
    assert.throws(
      () => new DeadlineQueue<number>(clock, timers, () => undefined, 0),
      /perTurn must be at least 1/,
    );
  });

  it('waits in steps for a deadline further off than a Node timer can wait', () => {
    // Node runs a longer timeout after 1 ms (TimeoutOverflowWarning): the queue would wake every millisecond.
    const asked: number[] = [];
    const spy = {
      now: () => clock.now(),
      setTimeout: (fn: () => void, ms: number) => (asked.push(ms), clock.setTimeout(fn, ms)),
    };
    const farQ = new DeadlineQueue<string>(
      spy,
      new TimerSet(spy),
      (x) => void fired.push(`${x}@${clock.now()}`),
    );
    const far = clock.now() + 2 ** 31 + 60_000;
    farQ.add(far, 'far');
    clock.advance(far - clock.now());
    assert.deepEqual(fired, [`far@${far}`]);
    assert.ok(
      asked.every((ms) => ms <= 2 ** 31 - 1),
      `asked for ${asked.join(', ')} ms`,
    );
    assert.equal(asked.length, 2, 'one full step, then the rest');
  });

  it('fires outside the async context that added the earliest entry (a call’s, a transaction’s, a trace’s)', async () => {
    // Real timers: the context is Node's, carried by the timer the queue arms. OpenTelemetry's context manager (on
    // AsyncLocalStorage) as an application registers it, and a store of the test's own.
    const store = new AsyncLocalStorage<string>();
    const manager = new AsyncLocalStorageContextManager().enable();
    context.setGlobalContextManager(manager);
    try {
      const seen: { item: string; store?: string; span?: string }[] = [];
      const done = new Promise<void>((resolve) => {
        const live = new DeadlineQueue<string>(systemClock, new TimerSet(systemClock), (item) => {
          seen.push({ item, store: store.getStore(), span: trace.getActiveSpan()?.spanContext().spanId });
          if (seen.length === 2) resolve();
        });
        const span = trace.wrapSpanContext({
          traceId: 'a'.repeat(32),
          spanId: 'b'.repeat(16),
          traceFlags: 1,
        });
        // The earliest entry is added inside a call of transaction A's trace; the later one outside any.
        store.run('call of A', () =>
          context.with(trace.setSpan(context.active(), span), () => live.add(Date.now() + 5, 'B')),
        );
        live.add(Date.now() + 10, 'C');
      });
      await done;
      assert.deepEqual(seen, [
        { item: 'B', store: undefined, span: undefined },
        { item: 'C', store: undefined, span: undefined },
      ]);
    } finally {
      context.disable();
    }
  });
});
