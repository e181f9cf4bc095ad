/**
 * Owns every timer of a component: `after()` schedules on the injected clock and remembers the handle until it
 * fires or is cancelled; `cancelAll()` (from stop()) cancels the lot and refuses new ones, so nothing keeps
 * the process alive after stop and nothing fires into a stopped component.
 */
import type { Clock, Timer } from '../common';

const NOOP: Timer = { cancel: () => undefined };

export class TimerSet {
  private readonly live = new Set<Timer>();
  /** Pending `within` waits, each ended with its timeout error by cancelAll(). */
  private readonly waiting = new Set<() => void>();
  private closed = false;

  constructor(private readonly clock: Clock) {}

  after(ms: number, fn: () => void): Timer {
    if (this.closed) return NOOP;
    const handle = this.clock.setTimeout(() => {
      this.live.delete(own);
      fn();
    }, ms);
    const own: Timer = {
      cancel: () => {
        this.live.delete(own);
        handle.cancel();
      },
    };
    this.live.add(own);
    return own;
  }

  /**
   * Settles like `p`, or rejects with `timeoutError()` after `ms` if `p` has not settled by then — or at
   * `cancelAll()`, or at once when already cancelled.
   */
  within<T>(p: Promise<T>, ms: number, timeoutError: () => Error): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      // cancelAll() (a stop) ends the wait as the timeout would: what it waited for may never settle now.
      if (this.closed) return reject(timeoutError());
      const expire = () => (t.cancel(), this.waiting.delete(expire), reject(timeoutError()));
      const t = this.after(ms, expire);
      this.waiting.add(expire);
      const done = () => (t.cancel(), this.waiting.delete(expire));
      p.then(
        (v) => (done(), resolve(v)),
        (err) => (done(), reject(err)),
      );
    });
  }

  get size(): number {
    return this.live.size;
  }

  cancelAll(): void {
    this.closed = true;
    for (const t of [...this.live]) t.cancel();
    this.live.clear();
    for (const expire of [...this.waiting]) expire();
  }
}
