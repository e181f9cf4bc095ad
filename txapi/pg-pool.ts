/**
 * pg's Pool emits 'error' when an idle connection dies (a database restart, an administrator's terminate), and
 * an 'error' with no listener ends the process. DMTP's PostgreSQL parts add one listener per pool, which logs
 * it; the pool opens a new connection when one is next needed. Exported for an application's own pools.
 *
 * And pg waits for a connection, free or new, and for a statement's answer, for ever by default: a database gone
 * silent (frozen, or behind a network that drops packets) held a call until TCP gave up (~15 minutes). DMTP's
 * PostgreSQL parts bound both waits themselves (`connectWithin`, `statementWithin`, `withConnection`), whatever the
 * application's pool says.
 */
import type { ClientBase, Pool, PoolClient, QueryResult, QueryResultRow } from 'pg';
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

/** What pg rejects a statement with once its `query_timeout` passed. */
const PG_READ_TIMEOUT = 'Query read timeout';

/** Whether `err` is pg's for a statement not answered within its `query_timeout`. */
export function isUnanswered(err: unknown): boolean {
  return (err as Error | undefined)?.message === PG_READ_TIMEOUT;
}

/**
 * `c.query(text, values)`, failed by pg once `ms` passed without an answer (`isUnanswered`). The connection then
 * still waits for that answer: give it back to its pool with an error, which closes it (a client of its own: end it).
 */
export function statementWithin<R extends QueryResultRow>(
  c: ClientBase,
  ms: number,
  text: string,
  values?: unknown[],
): Promise<QueryResult<R>> {
  // pg takes query_timeout per statement too (its types only know the client-wide one)
  const statement = { text, values, query_timeout: ms };
  return c.query<R>(statement);
}

/**
 * Runs `use` on a connection of `pool` taken within `ms` (`use` bounds its statements with `statementWithin`),
 * and gives it back, closed when it failed under `use` (lost, a statement unanswered, an error). `silent(what)` is
 * the error for a connection not had in time (`what`: 'no PostgreSQL connection') or an unanswered statement
 * ('PostgreSQL did not answer').
 */
export async function withConnection<T>(
  pool: Pool,
  ms: number,
  silent: (what: string) => Error,
  use: (c: PoolClient) => Promise<T>,
): Promise<T> {
  const c = await connectWithin(pool, ms, () => silent('no PostgreSQL connection'));
  // Checked out, the client has no pool listener: a connection lost meanwhile must fail the call, not the process.
  let lost: Error | undefined;
  const onError = (err: Error) => (lost = err);
  c.on('error', onError);
  let failed: Error | undefined;
  try {
    return await use(c);
  } catch (err) {
    failed = lost ?? (err as Error);
    throw isUnanswered(err) ? silent('PostgreSQL did not answer') : err;
  } finally {
    c.off('error', onError);
    c.release(failed ?? lost);
  }
}
