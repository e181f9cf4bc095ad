/**
 * An injectable clock: everything with a timeout takes one, so tests drive time with `ManualClock`
 * instead of sleeping.
 */
/**
 * The longest wait a Node timer can do (2^31-1 ms, ~24.8 days): a longer one runs after 1 ms (with a warning), so
 * a far deadline is re-armed in steps of this, or refused.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export interface Timer {
  cancel(): void;
  /** Lets the process exit while only this timer is pending (system clock only). */
  unref?(): void;
}

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): Timer;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const h = setTimeout(fn, ms);
    return { cancel: () => clearTimeout(h), unref: () => void h.unref() };
  },
};

/** A clock that moves only when told (`advance`), firing due timers in order. For unit tests. */
export class ManualClock implements Clock {
  private t: number;
  private seq = 0;
  private timers = new Map<number, { at: number; fn: () => void }>();

  constructor(start = 1_000_000) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): Timer {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return { cancel: () => this.timers.delete(id) };
  }

  /** Moves time forward by `ms`, running every timer that falls due, earliest first. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const e of this.timers) if (e[1].at <= end && (!next || e[1].at < next[1].at)) next = e;
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
    }
    this.t = end;
  }

  pending(): number {
    return this.timers.size;
  }
}
