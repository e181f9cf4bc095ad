/**
 * Deadlines of many calls behind ONE timer: it is armed at the earliest deadline known when armed; when it fires
 * it expires every call that is due and re-arms at the earliest remaining one. A call that settles costs nothing
 * (it just leaves the set). Per-call `setTimeout`/`clearTimeout` would cost more than the call itself on the
 * multiplexed path.
 */
import { MAX_TIMER_MS, type Clock, type Timer } from '../../common/clock';

export interface Deadlined {
  /** Absolute deadline in ms since the epoch (Infinity = none). */
  readonly deadline: number;
}

export class DeadlineTracker<T extends Deadlined> {
  private readonly items = new Set<T>();
  private timer: Timer | undefined;
  private armedAt = Infinity;

  constructor(
    private readonly clock: Clock,
    private readonly onExpire: (item: T) => void,
  ) {}

  get size(): number {
    return this.items.size;
  }

  add(item: T): void {
    if (item.deadline === Infinity) return;
    this.items.add(item);
    if (item.deadline < this.armedAt) this.arm(item.deadline);
  }

  delete(item: T): void {
    if (item.deadline === Infinity) return;
    this.items.delete(item);
    if (this.items.size === 0) this.disarm();
  }

  /** Cancels the timer and forgets every item (nothing expires afterwards). */
  clear(): void {
    this.items.clear();
    this.disarm();
  }

  private arm(at: number): void {
    this.timer?.cancel();
    this.armedAt = at;
    const ms = Math.min(MAX_TIMER_MS, Math.max(0, at - this.clock.now()));
    this.timer = this.clock.setTimeout(() => this.fire(), ms);
  }

  private disarm(): void {
    this.timer?.cancel();
    this.timer = undefined;
    this.armedAt = Infinity;
  }

  private fire(): void {
    this.timer = undefined;
    this.armedAt = Infinity;
    const now = this.clock.now();
    const due: T[] = [];
    let next = Infinity;
    for (const item of this.items) {
      if (item.deadline <= now) due.push(item);
      else if (item.deadline < next) next = item.deadline;
    }
    for (const item of due) this.items.delete(item);
    if (next !== Infinity) this.arm(next);
    for (const item of due) this.onExpire(item);
  }
}
