/**
 * Many deadlines in one min-heap with one timer armed for the earliest. A Node timer per deadline (a timeout, its
 * wrapper and closures) was most of what an ACTIVE transaction cost the coordinator in memory: here one costs a
 * small entry, removed from the heap at once when cancelled (a committed transaction's, a prepared branch's).
 *
 * Entries fire in order of their time, ties in the order they were added, when the clock reaches it (as a timer
 * of their own would). The one timer comes from the owner's scheduler: the coordinator's TimerSet, so its
 * cancelAll() at stop disarms the queue too.
 *
 * At most `perTurn` entries fire in one turn of the event loop; the rest fire on the next timer turn, after the
 * I/O that waited. 10,000 transactions expiring together held the coordinator's loop for up to ~150 ms before,
 * with every Commit, participant reply and etcd keep-alive held behind it; 10,000 branches of a participant
 * expiring together held its loop as long.
 */
import { AsyncResource } from 'node:async_hooks';
import { MAX_TIMER_MS, type Clock, type Timer } from './clock';
import { logger } from './log';

const log = logger('common:deadlines');

/**
 * The async context this module was loaded in: no call's, transaction's or trace's. The one timer is armed in it,
 * so deadlines fire outside whatever context added the earliest entry. Armed inside a call, every deadline the
 * timer fired ran in that call's context: an expired transaction's rollback calls became spans of another
 * transaction's trace.
 */
const OUTSIDE = new AsyncResource('DmtpDeadlineQueue');

/** Schedules the queue's one timer (a TimerSet has this shape; or a clock's setTimeout, arguments swapped). */
export interface Scheduler {
  after(ms: number, fn: () => void): Timer;
}

/**
 * Deadlines fired in one turn before the queue yields to I/O (an ACTIVE abort's synchronous part is ~15 µs, a
 * branch's deadline rollback up to its first I/O ~25 µs).
 */
export const DEFAULT_PER_TURN = 256;

/** One deadline: its own handle (a method, not a closure per entry: an entry is all an ACTIVE transaction adds). */
class Entry<T> implements Timer {
  /** Position in the heap; -1 once out of it (fired or cancelled). */
  i = -1;
  constructor(
    private readonly queue: DeadlineQueue<T>,
    readonly at: number,
    readonly seq: number,
    public item: T | undefined,
  ) {}

  cancel(): void {
    this.queue.remove(this);
  }
}

export class DeadlineQueue<T> {
  private readonly heap: Entry<T>[] = [];
  private seq = 0;
  /** The armed timer and the time it is armed for. */
  private armed: { at: number; timer: Timer } | undefined;

  constructor(
    private readonly clock: Clock,
    private readonly timers: Scheduler,
    private readonly due: (item: T) => void,
    private readonly perTurn = DEFAULT_PER_TURN,
  ) {
    if (!(perTurn >= 1)) throw new RangeError(`perTurn must be at least 1, not ${perTurn}`);
  }

  /** Calls `due(item)` at clock time `at` (on the next turn when it has passed) unless cancelled first. */
  add(at: number, item: T): Timer {
    const entry = new Entry(this, at, this.seq++, item);
    entry.i = this.heap.length;
    this.heap.push(entry);
    this.up(entry.i);
    this.arm();
    return entry;
  }

  get size(): number {
    return this.heap.length;
  }

  /** @internal Entry.cancel() */
  remove(e: Entry<T>): void {
    if (e.i < 0) return;
    const i = e.i;
    const last = this.heap.pop()!;
    e.i = -1;
    e.item = undefined;
    if (last !== e) {
      this.heap[i] = last;
      last.i = i;
      this.down(i);
      this.up(last.i);
    }
    if (this.heap.length === 0) {
      this.armed?.timer.cancel();
      this.armed = undefined;
    } // otherwise the armed timer may fire early for nothing: it re-arms then
  }

  /**
   * Arms the timer for the earliest entry unless one is armed for that time or earlier. A time further off than a
   * Node timer can wait (~24.8 days) is waited for in steps: an early wake finds nothing due and arms again.
   */
  private arm(): void {
    const first = this.heap[0];
    if (!first) return;
    if (this.armed && this.armed.at <= first.at) return;
    this.armed?.timer.cancel();
    const at = first.at;
    const ms = Math.min(MAX_TIMER_MS, Math.max(0, at - this.clock.now()));
    this.armed = { at, timer: OUTSIDE.runInAsyncScope(() => this.timers.after(ms, () => this.fire())) };
  }

  private fire(): void {
    this.armed = undefined;
    const now = this.clock.now();
    let fired = 0;
    // the rest of what is due re-arms for 0 ms below: the next timer turn, after the I/O that waited
    while (this.heap.length > 0 && this.heap[0].at <= now && fired < this.perTurn) {
      const e = this.heap[0];
      const item = e.item;
      this.remove(e);
      if (item === undefined) continue;
      fired++;
      try {
        this.due(item);
      } catch (err) {
        // one deadline's failure must not leave the later ones unarmed
        log.error('a deadline handler failed', { err });
      }
    }
    this.arm();
  }

  private less(a: Entry<T>, b: Entry<T>): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }
  private swap(i: number, j: number): void {
    const h = this.heap;
    [h[i], h[j]] = [h[j], h[i]];
    h[i].i = i;
    h[j].i = j;
  }

  private up(i: number): void {
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.less(this.heap[i], this.heap[parent])) return;
      this.swap(i, parent);
      i = parent;
    }
  }

  private down(i: number): void {
    const n = this.heap.length;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < n && this.less(this.heap[l], this.heap[m])) m = l;
      if (r < n && this.less(this.heap[r], this.heap[m])) m = r;
      if (m === i) return;
      this.swap(i, m);
      i = m;
    }
  }
}
