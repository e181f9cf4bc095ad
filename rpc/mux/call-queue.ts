/**
 * A FIFO of calls waiting for a slot on the stream: O(1) push and shift, settled calls skipped lazily, and swept
 * out once they are most of what it holds (a stream that takes nothing for a while must not keep every call that
 * expired meanwhile).
 */
export class CallQueue<T extends { settled: boolean }> {
  private items: T[] = [];
  private head = 0;
  private live = 0;

  /** Entries held, settled ones not yet swept out included (tests: memory stays bounded by the live calls). */
  get retained(): number {
    return this.items.length - this.head;
  }

  /** Calls waiting and not yet settled. */
  get size(): number {
    return this.live;
  }

  push(item: T): void {
    this.items.push(item);
    this.live++;
  }

  /** The next unsettled call, or undefined. */
  shift(): T | undefined {
    while (this.head < this.items.length) {
      const item = this.items[this.head++];
      if (this.head > 1024 && this.head * 2 > this.items.length) {
        this.items = this.items.slice(this.head);
        this.head = 0;
      }
      if (!item.settled) {
        this.live--;
        return item;
      }
    }
    return undefined;
  }

  /** A queued call settled elsewhere (cancelled, expired): it no longer counts. */
  forget(): void {
    this.live--;
    const held = this.items.length - this.head;
    if (held > 1024 && this.live * 2 < held) {
      this.items = this.items.slice(this.head).filter((i) => !i.settled);
      this.head = 0;
    }
  }

  /** Removes and returns every unsettled call. */
  drain(): T[] {
    const out = this.items.slice(this.head).filter((i) => !i.settled);
    this.items = [];
    this.head = 0;
    this.live = 0;
    return out;
  }
}
