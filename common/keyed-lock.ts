/**
 * Runs tasks one at a time per key: a participant's business calls, prepare, commit, rollback and timers of one
 * branch; a coordinator's operator settles of one transaction.
 */
export class KeyedLock {
  /** Per key: settles once the last task queued for it has settled (and the key was cleaned up). */
  private readonly tails = new Map<string, Promise<void>>();

  /**
   * Runs `fn` once every task queued before it for `key` settled; rejects as `fn` does. An idle key runs `fn`
   * at once (the hot path: one promise of bookkeeping, no chain).
   */
  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key);
    let mine: Promise<T>;
    if (prev) {
      mine = prev.then(fn);
    } else {
      try {
        mine = fn();
      } catch (err) {
        mine = Promise.reject(err);
      }
    }
    const done = (): void => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    };
    const tail: Promise<void> = mine.then(done, done);
    this.tails.set(key, tail);
    return mine;
  }

  /** Keys with a task running or queued. */
  get size(): number {
    return this.tails.size;
  }
}
