/**
 * Retries a log write with backoff until it lands. For writes that must eventually happen (the commit decision
 * once phase 1 succeeded, a finished record's removal): a LogConflictError (another writer, a lost fence) is
 * final, and so is the owner stopping.
 */
import { logger, UnavailableError, type BackoffOptions } from '../../common';
import { LogConflictError } from '../errors';
import type { TimerSet } from '../timer-set';

const log = logger('coordinator:log');

export function untilDurable(
  xid: string,
  write: () => Promise<void>,
  timers: TimerSet,
  backoff: BackoffOptions,
  stopped: () => boolean,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const attempt = (n: number) => {
      if (stopped()) return reject(new UnavailableError('coordinator stopping'));
      write().then(resolve, (err) => {
        if (err instanceof LogConflictError || stopped()) return reject(err);
        (n % 10 === 1 ? log.warn : log.debug)('log write failed; retrying', { xid, attempt: n, err });
        const delay = Math.min(backoff.maxMs, backoff.initialMs * Math.pow(backoff.multiplier, n - 1));
        timers.after(delay, () => attempt(n + 1));
      });
    };
    attempt(1);
  });
}
