/**
 * A retry budget as a token bucket: every call deposits `ratio` tokens (up to `capacity`), every retry spends
 * one. Retries therefore stay under ~`ratio` of the traffic once the bucket is drained, so a sick cluster is
 * not buried under retries, while a burst of failures after an instance dies still gets `capacity` retries.
 */
export interface RetryBudgetOptions {
  /** Tokens each call deposits: the long-run fraction of calls that may be retried (default 0.2). */
  ratio?: number;
  /** Most tokens the bucket holds, and what it starts with (default 20). */
  capacity?: number;
}

export class RetryBudget {
  readonly ratio: number;
  readonly capacity: number;
  private tokens: number;

  constructor(options: RetryBudgetOptions = {}) {
    this.ratio = options.ratio ?? 0.2;
    this.capacity = options.capacity ?? 20;
    this.tokens = this.capacity;
  }

  /** Records a first attempt. */
  onCall(): void {
    this.tokens = Math.min(this.capacity, this.tokens + this.ratio);
  }

  /** Spends one token for a retry; false when the budget is exhausted (the call then fails as it is). */
  tryRetry(): boolean {
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  get available(): number {
    return this.tokens;
  }
}
