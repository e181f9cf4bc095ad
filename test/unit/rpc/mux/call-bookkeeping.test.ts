import { strict as assert } from 'node:assert';
import { ManualClock } from '../../../../common/clock';
import { CallQueue } from '../../../../rpc/mux/call-queue';
import { DeadlineTracker } from '../../../../rpc/mux/deadline-tracker';

describe('mux DeadlineTracker', () => {
  it('expires each call at its deadline behind one timer', () => {
    const clock = new ManualClock();
    const expired: string[] = [];
    const t = new DeadlineTracker<{ id: string; deadline: number }>(clock, (c) => expired.push(c.id));
    const now = clock.now();
    t.add({ id: 'late', deadline: now + 300 });
    t.add({ id: 'early', deadline: now + 100 });
    t.add({ id: 'none', deadline: Infinity });
    assert.equal(clock.pending(), 1);
    clock.advance(99);
    assert.deepEqual(expired, []);
    clock.advance(1);
    assert.deepEqual(expired, ['early']);
    clock.advance(200);
    assert.deepEqual(expired, ['early', 'late']);
    assert.equal(clock.pending(), 0);
  });

  it('arms a deadline further away than a Node timer can wait in steps, never a 1 ms timer', () => {
    const clock = new ManualClock();
    const delays: number[] = [];
    const setTimeout = clock.setTimeout.bind(clock);
    clock.setTimeout = (fn, ms) => (delays.push(ms), setTimeout(fn, ms));
    const expired: number[] = [];
    const t = new DeadlineTracker<{ deadline: number }>(clock, (c) => expired.push(c.deadline));
    const far = clock.now() + 0xffffffff; // the longest deadline a mux frame carries (~49.7 days)
    t.add({ deadline: far });
    clock.advance(0xffffffff - 1);
    assert.deepEqual(expired, []);
    clock.advance(1);
    assert.deepEqual(expired, [far]);
    assert.deepEqual(delays, [2 ** 31 - 1, 2 ** 31 - 1, 1], 'two full steps, then the rest');
  });

  it('forgets settled calls and cancels its timer when none is left', () => {
    const clock = new ManualClock();
    const expired: number[] = [];
    const t = new DeadlineTracker<{ deadline: number }>(clock, (c) => expired.push(c.deadline));
    const a = { deadline: clock.now() + 50 };
    t.add(a);
    t.delete(a);
    assert.equal(clock.pending(), 0);
    clock.advance(100);
    assert.deepEqual(expired, []);
  });
});

describe('mux CallQueue', () => {
  it('is FIFO and skips calls settled while queued', () => {
    const q = new CallQueue<{ id: number; settled: boolean }>();
    const items = Array.from({ length: 5 }, (_, id) => ({ id, settled: false }));
    items.forEach((i) => q.push(i));
    items[1].settled = true;
    q.forget();
    assert.equal(q.size, 4);
    assert.equal(q.shift()!.id, 0);
    assert.equal(q.shift()!.id, 2);
    assert.equal(q.size, 2);
    assert.deepEqual(
      q.drain().map((i) => i.id),
      [3, 4],
    );
    assert.equal(q.size, 0);
    assert.equal(q.shift(), undefined);
  });

  it('stays O(1) over many pushes and shifts', () => {
    const q = new CallQueue<{ id: number; settled: boolean }>();
    for (let i = 0; i < 10_000; i++) q.push({ id: i, settled: false });
    for (let i = 0; i < 10_000; i++) assert.equal(q.shift()!.id, i);
    assert.equal(q.size, 0);
  });

  it('sweeps out settled calls once they are most of what it holds, keeping order', () => {
    const q = new CallQueue<{ id: number; settled: boolean }>();
    const items = Array.from({ length: 5_000 }, (_, id) => ({ id, settled: false }));
    items.forEach((i) => q.push(i));
    for (const i of items) {
      if (i.id % 100 === 0) continue; // 50 stay live
      i.settled = true;
      q.forget();
    }
    assert.equal(q.size, 50);
    assert.ok(q.retained <= 2_100, `${q.retained} entries retained for 50 live calls`);
    assert.deepEqual(
      q.drain().map((i) => i.id),
      items.filter((i) => i.id % 100 === 0).map((i) => i.id),
    );
  });
});
