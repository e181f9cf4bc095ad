/** Exponential backoff with full jitter, as used by every retry loop in DMTP. */
export interface BackoffOptions {
  /** First delay, before jitter. */
  initialMs: number;
  /** Ceiling for any delay. */
  maxMs: number;
  /** Growth per attempt. */
  multiplier: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 50, maxMs: 5_000, multiplier: 2 };

/** Delay before retry number `attempt` (1-based), jittered in [delay/2, delay]. */
export function backoffMs(attempt: number, o: BackoffOptions = DEFAULT_BACKOFF, rand = Math.random): number {
  const raw = Math.min(o.maxMs, o.initialMs * Math.pow(o.multiplier, Math.max(0, attempt - 1)));
  return Math.round(raw / 2 + (rand() * raw) / 2);
}
