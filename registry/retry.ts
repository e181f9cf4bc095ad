/**
 * The registry's background retry loop: run an etcd step until it succeeds or the owner stops, sleeping a
 * jittered backoff between attempts on an owned, cancellable timer. Failures are logged, never thrown, so a
 * background loop can never become an unhandled rejection; stopping (the AbortSignal) ends the sleep at once,
 * so `close()` leaves no timer behind.
 */
import { backoffMs, type BackoffOptions, type Clock, type Logger } from '../common';

export interface RetryOptions {
  signal: AbortSignal;
  backoff: BackoffOptions;
  clock: Clock;
  log: Logger;
  /** Log fields naming what is retried (service, instanceId, …). */
  fields?: Record<string, unknown>;
}

/** Resolves after `ms`, or at once when `signal` aborts; the timer is cancelled either way. */
export function sleep(ms: number, clock: Clock, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const onAbort = () => {
      timer.cancel();
      resolve();
    };
    const timer = clock.setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Calls `step(attempt)` until it resolves; returns its value, or undefined once `signal` aborted.
 * `onFailure` sees each failure (e.g. to reject callers waiting for a first result).
 */
export async function retryUntil<T>(
  what: string,
  step: (attempt: number) => Promise<T>,
  o: RetryOptions,
  onFailure?: (err: unknown, attempt: number) => void,
): Promise<T | undefined> {
  for (let attempt = 1; ; attempt++) {
    if (o.signal.aborted) return undefined;
    try {
      return await step(attempt);
    } catch (err) {
      if (o.signal.aborted) return undefined;
      onFailure?.(err, attempt);
      const delayMs = backoffMs(attempt, o.backoff);
      // First failure and then every tenth: an etcd outage should be visible without flooding the log.
      const level = attempt === 1 || attempt % 10 === 0 ? 'warn' : 'debug';
      o.log[level](`${what} failed; retrying`, { ...o.fields, attempt, delayMs, err });
      await sleep(delayMs, o.clock, o.signal);
    }
  }
}
