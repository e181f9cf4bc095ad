/**
 * A count of things under way with waiters for the moment it drops to zero: the calls made in a transaction
 * (its commit waits for them) and the business calls a participant took (its stop waits for them).
 */
export class InFlight {
  private n = 0;
  private waiters: (() => void)[] = [];

  get size(): number {
    return this.n;
  }

  enter(): void {
    this.n++;
  }

  leave(): void {
    if (--this.n === 0 && this.waiters.length > 0) for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves once nothing is under way (at once when nothing is). */
  whenIdle(): Promise<void> {
    if (this.n === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}
