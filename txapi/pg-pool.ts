/**
 * pg's Pool emits 'error' when an idle connection dies (a database restart, an administrator's terminate), and
 * an 'error' with no listener ends the process. DMTP's PostgreSQL parts add one listener per pool, which logs
 * it; the pool opens a new connection when one is next needed. Exported for an application's own pools.
 *
 * And pg waits for a connection, free or new, for ever by default (`connectionTimeoutMillis` 0): DMTP's PostgreSQL
 * parts bound that wait themselves (`connectWithin`), whatever the application's pool says.
 */
import type { Pool, PoolClient } from 'pg';
import { logger } from '../common';

const log = logger('txapi:pg');
const watched = new WeakSet<Pool>();

/** Adds the logging 'error' listener to `pool`, once per pool. */
export function surviveIdleErrors(pool: Pool): void {
  if (watched.has(pool)) return;
  watched.add(pool);
  pool.on('error', (err) =>
    log.warn('an idle PostgreSQL connection was lost; the pool replaces it', { err }),
  );
}

/**
 * A connection of `pool`, or `timeoutError()` once `ms` passed without one (a pool whose connections are all
 * taken, a server that accepts the connection and never answers). A connection that comes after that goes back
 * to the pool; a connect that fails after it is only dropped.
 */
export function connectWithin(pool: Pool, ms: number, timeoutError: () => Error): Promise<PoolClient> {
  return new Promise((resolve, reject) => {
    let late = false;
    const t = setTimeout(() => {
      late = true;
      reject(timeoutError());
    }, ms);
    pool.connect().then(
      (c) => {
        clearTimeout(t);
        if (late) c.release();
        else resolve(c);
      },
      (err: unknown) => {
        clearTimeout(t);
        if (!late) reject(err);
      },
    );
  });
}
