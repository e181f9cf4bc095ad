/**
 * pg's Pool emits 'error' when an idle connection dies (a database restart, an administrator's terminate), and
 * an 'error' with no listener ends the process. DMTP's PostgreSQL parts add one listener per pool, which logs
 * it; the pool opens a new connection when one is next needed. Exported for an application's own pools.
 */
import type { Pool } from 'pg';
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
