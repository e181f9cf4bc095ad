/**
 * One process per participant instance on a PostgreSQL database. Instances of a service share the database, and
 * each acts on its own branches without asking anyone: at start it rolls back its `registered` branches (their
 * work died with the previous process) and its resource's prepared transactions that were never voted. A second
 * process started with the same instance id (a copied configuration, a pod started before its predecessor ended)
 * would do that to the live process's branches: roll back a transaction the live one just prepared, whose COMMIT
 * PREPARED then finds nothing to commit. So `PgBranchStore` (its table) and `pgResource` (its prepared
 * transactions) each hold a session-level advisory lock on (what, instance id) on a connection of its own, for as
 * long as they are open: a twin's start is refused with FAILED_PRECONDITION naming the process that holds it (its
 * `application_name` carries pid and host).
 *
 * The lock ends with its connection: a holder killed releases it at once. A holder whose lock connection is lost
 * (a database restart, an administrator's terminate, a network cut) takes the lock again, with backoff. Its
 * store's writes wait for that (`whenHeld`), so no write is made while a twin may hold the instance: up to the
 * store's `queryTimeoutMs`, then UNAVAILABLE. If another process holds the lock by then, the store refuses every
 * write from then on (FAILED_PRECONDITION), as a file store does once its lock was taken over; reads go on. The
 * resource does the same with what starts or recovers work (begin, prepare, the in-doubt list); phase 2 goes on.
 *
 * A connection can also be lost without either side hearing of it (a network that drops packets, a firewall that
 * forgot the connection): the server ends the session, and the lock, when its keepalive gives up (~25 s, set
 * below), while the holder's own TCP keepalive would take many minutes to notice. So the holder asks its lock's
 * connection every HEARTBEAT_MS and counts it lost when the answer takes longer than that (and a second question,
 * RECHECK_MS, goes unanswered too: see `beat`): it stops writing (≤ 2 × HEARTBEAT_MS + RECHECK_MS after the
 * silence began) well before the server can give the lock to anyone else. Its session may still be open on the
 * server's side then (a silence both ways): taking the lock again, it ends that session of its own
 * (pg_terminate_backend on the backend it had) instead of taking it for a twin.
 */
import { hostname } from 'node:os';
import { Client, type Pool } from 'pg';
import { backoffMs, FailedPreconditionError, logger, UnavailableError, type BackoffOptions } from '../common';
import type { BranchKey, InstanceOwner } from './branch-store';
import { isUnanswered, statementWithin } from './pg-pool';

const log = logger('txapi:pg');
const RETAKE: BackoffOptions = { initialMs: 250, maxMs: 5_000, multiplier: 2 };
/** How long a lock held by another session is asked for again before that session counts as a live holder. */
const TAKE_GRACE_MS = 1_000;
const TAKE_RETRY_MS = 100;
/** How often the lock's connection is asked whether it is alive, and how long its answer is waited for. */
const HEARTBEAT_MS = 5_000;
/** How long the second question waits, asked when the first one's answer did not come in time (see `beat`). */
const RECHECK_MS = 1_000;
/** PostgreSQL keeps an application_name's first 63 bytes (NAMEDATALEN - 1). */
const MAX_APPLICATION_NAME = 63;

/** Session settings of the lock's connection (ignored on a Unix socket, where a peer cannot vanish). */
const KEEPALIVE_SQL =
  'SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3';

/** The other session holding the lock, for the error, from pg_locks and pg_stat_activity. */
const HOLDER_SQL = `
  SELECT a.pid, a.application_name, host(a.client_addr) AS addr, a.client_port AS port, a.backend_start AS since
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
  WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND ((l.classid::bigint << 32) | l.objid::bigint) = $1::bigint`;

interface HolderRow {
  pid: number;
  application_name: string;
  addr: string | null;
  port: number | null;
  since: Date | null;
}

export interface PgInstanceLockOptions {
  /** Its connection is made with this pool's settings, outside the pool. */
  pool: Pool;
  /** Names the holder in errors and logs: `branch store dmtp_branches`, `resource stock`. */
  what: string;
  /** The errors' details and the logs' fields besides the instance id: `{ table }`, `{ resource }`. */
  ids: Record<string, string>;
  /** Keys the lock with the instance id: `branch-store:dmtp_branches`. */
  scope: string;
  owner: InstanceOwner;
  /** Connect, statement and goodbye bounds; also how long a write waits while the lock is taken again. */
  timeoutMs: number;
}

export class PgInstanceLock {
  /** Set once another process took the lock this one lost: the store refuses writes with it. */
  lost: Error | undefined;
  /** Held on a live connection (as far as this process knows): writes go ahead at once. */
  held = false;
  /** While the lock is being taken again: settles when it is held again (or lost for good). */
  private retaking: Promise<void> | undefined;
  private settleRetake: ((err?: Error) => void) | undefined;
  private client: Client | undefined;
  private closed = false;
  private retake: NodeJS.Timeout | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private attempts = 0;
  /** The backend of the lock's connection (pg_backend_pid), and of the one lost, whose session may outlive it. */
  private backendPid: number | undefined;
  private ghostPid: number | undefined;

  private readonly pool: Pool;
  private readonly what: string;
  private readonly ids: Record<string, string>;
  private readonly scope: string;
  private readonly instanceId: string;
  private readonly service: string | undefined;
  private readonly timeoutMs: number;

  /** Takes the lock for `o.owner` (see `acquire`) and returns it, held. */
  static async take(o: PgInstanceLockOptions): Promise<PgInstanceLock> {
    const lock = new PgInstanceLock(o);
    await lock.acquire();
    return lock;
  }

  private constructor(o: PgInstanceLockOptions) {
    this.pool = o.pool;
    this.what = o.what;
    this.ids = o.ids;
    this.scope = o.scope;
    this.instanceId = o.owner.instanceId;
    this.service = o.owner.service;
    this.timeoutMs = o.timeoutMs;
  }

  /**
   * Takes the lock, or throws FailedPreconditionError naming the process that holds it (UnavailableError when
   * PostgreSQL cannot be asked).
   */
  private async acquire(): Promise<void> {
    const holder = await this.take().catch((err: Error) => {
      throw new UnavailableError(
        `${this.what}: instance '${this.instanceId}''s lock could not be taken: ${err.message}`,
        { details: { ...this.ids, instanceId: this.instanceId } },
      );
    });
    if (holder !== undefined) {
      throw new FailedPreconditionError(
        `${this.what}: instance '${this.instanceId}' is already running against this database ` +
          `(${holder}); one process per instance id: give this one another id, or stop the other first`,
        { details: { ...this.ids, instanceId: this.instanceId } },
      );
    }
  }

  /**
   * Resolves at once while the lock is held; while it is being taken again, once it is (UnavailableError after
   * `timeoutMs`); rejects once another process took it.
   */
  whenHeld(key?: BranchKey): Promise<void> {
    if (this.lost) return Promise.reject(this.lost);
    if (this.closed) return Promise.reject(new FailedPreconditionError(`${this.what}: closed`));
    if (this.held || !this.retaking) return Promise.resolve();
    const details = {
      ...this.ids,
      instanceId: this.instanceId,
      ...(key && { xid: key.xid, branchId: key.branchId }),
    };
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new UnavailableError(
              `${this.what}: instance '${this.instanceId}' lost its lock's connection and has not ` +
                `taken the lock again within ${this.timeoutMs} ms (queryTimeoutMs); nothing done` +
                (key ? ` (branch ${key.branchId} of ${key.xid})` : ''),
              { details },
            ),
          ),
        this.timeoutMs,
      );
    });
    return Promise.race([this.retaking, late]).finally(() => clearTimeout(timer));
  }

  /** Ends the lock's connection, and with it the lock. */
  async release(): Promise<void> {
    this.closed = true;
    this.held = false;
    clearTimeout(this.retake);
    clearInterval(this.heartbeat);
    this.settleRetake?.(new FailedPreconditionError(`${this.what}: closed`));
    const c = this.client;
    this.client = undefined;
    if (c) await endWithin(c, this.timeoutMs);
  }

  /** Undefined once the lock is held on a connection of its own; else who holds it. Throws when unreachable. */
  private async take(): Promise<string | undefined> {
    const c = new Client({
      ...this.pool.options,
      application_name: applicationName(this.instanceId, this.service),
      connectionTimeoutMillis: this.timeoutMs,
      query_timeout: this.timeoutMs,
      // An idle connection: TCP keepalive is what notices a peer gone silent (its session, and lock, end too).
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    });
    c.on('error', (err) => this.onLost(c, err));
    let pid = 0;
    try {
      await c.connect();
      // The server's side: a holder whose host vanished (no FIN, no RST) would keep its session, and the
      // instance locked, for the OS's keepalive time (2 hours by default); this ends it within ~25 s.
      await c.query(KEEPALIVE_SQL);
      // Held by another session: asked again for a moment, as a holder just killed may still be ending its
      // session (the restart of a killed process must not be refused by its own ghost).
      const until = Date.now() + Math.min(TAKE_GRACE_MS, this.timeoutMs);
      let k = '';
      let ok = false;
      for (;;) {
        const r = await c.query<{ k: string; ok: boolean; pid: number }>(
          'SELECT k::text AS k, pg_try_advisory_lock(k) AS ok, pg_backend_pid() AS pid ' +
            'FROM (SELECT hashtextextended($1, 0) AS k) s',
          [`dmtp-${this.scope}:${this.instanceId}`],
        );
        ({ k, ok, pid } = r.rows[0]);
        if (ok) break;
        if (this.ghostPid !== undefined && (await this.endGhost(c, k))) continue;
        if (Date.now() + TAKE_RETRY_MS > until) break;
        await new Promise((resolve) => setTimeout(resolve, TAKE_RETRY_MS));
      }
      if (!ok) {
        const holder = await c.query<HolderRow>(HOLDER_SQL, [k]);
        await endWithin(c, this.timeoutMs);
        return describe(holder.rows[0]);
      }
    } catch (err) {
      await endWithin(c, this.timeoutMs);
      throw err;
    }
    if (this.closed) {
      await endWithin(c, this.timeoutMs);
      return undefined;
    }
    this.client = c;
    this.held = true;
    this.backendPid = pid;
    this.ghostPid = undefined;
    c.on('end', () => this.onLost(c, new Error('the connection ended')));
    this.beat(c);
    return undefined;
  }

  /**
   * The lock is held by this process's lost connection, still open on the server's side (its end never reached
   * it): ends that session, so the lock can be taken again. True if it was ended (asked again at once).
   */
  private async endGhost(c: Client, k: string): Promise<boolean> {
    const r = await c.query<{ ended: boolean }>(
      `SELECT pg_terminate_backend(l.pid) AS ended FROM pg_locks l
       WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.pid = $2
         AND ((l.classid::bigint << 32) | l.objid::bigint) = $1::bigint`,
      [k, this.ghostPid],
    );
    if (!r.rows[0]?.ended) return false;
    log.warn("ended this process's own lost lock session, still open on the server", {
      ...this.ids,
      instanceId: this.instanceId,
      backend: this.ghostPid,
    });
    this.ghostPid = undefined;
    await new Promise((resolve) => setTimeout(resolve, TAKE_RETRY_MS)); // its backend lets go as it exits
    return true;
  }

  /**
   * Asks the lock's connection every HEARTBEAT_MS; no answer within that (or `timeoutMs` if less) counts it lost —
   * after one more question (`RECHECK_MS`): when this process's event loop was blocked past the deadline, the
   * deadline's timer fires before the answer already in the socket is read. That answer is read right after, the
   * connection then takes the second question at once, and a live connection is not dropped for a blocked loop.
   * A silent one fails the second question too, RECHECK_MS later.
   */
  private beat(c: Client): void {
    let asking = false;
    clearInterval(this.heartbeat);
    const ask = (ms: number) => statementWithin(c, Math.min(ms, this.timeoutMs), 'SELECT 1');
    this.heartbeat = setInterval(() => {
      if (asking || c !== this.client) return;
      asking = true;
      ask(HEARTBEAT_MS)
        .catch((err: Error) => (isUnanswered(err) ? ask(RECHECK_MS) : Promise.reject(err)))
        .then(
          () => (asking = false),
          (err: Error) => this.onLost(c, err),
        );
    }, HEARTBEAT_MS);
    this.heartbeat.unref();
  }

  private onLost(c: Client, err: Error): void {
    if (this.closed || c !== this.client) return;
    this.client = undefined;
    this.held = false;
    clearInterval(this.heartbeat);
    this.ghostPid = this.backendPid;
    void endWithin(c, this.timeoutMs); // gone already, or silent: its session may outlive it (see endGhost)
    this.retaking = new Promise<void>((resolve, reject) => {
      this.settleRetake = (e) => {
        this.retaking = undefined;
        this.settleRetake = undefined;
        if (e) reject(e);
        else resolve();
      };
    });
    this.retaking.catch(() => undefined); // a write waiting gets it; none may be
    log.warn('the connection holding this instance lock was lost; taking the lock again', {
      ...this.ids,
      instanceId: this.instanceId,
      err,
    });
    this.scheduleRetake();
  }

  private scheduleRetake(): void {
    this.retake = setTimeout(
      () => {
        this.take().then(
          (holder) => {
            this.attempts = 0;
            if (holder === undefined) {
              log.info('instance lock held again', { ...this.ids, instanceId: this.instanceId });
              this.settleRetake?.();
              return;
            }
            this.lost = new FailedPreconditionError(
              `${this.what}: instance '${this.instanceId}' lost its lock to another process (${holder}); ` +
                'this process no longer acts on its branches: two processes run with one instance id',
              { details: { ...this.ids, instanceId: this.instanceId } },
            );
            log.error('instance lock taken by another process: work refused from now on', {
              ...this.ids,
              instanceId: this.instanceId,
              holder,
            });
            this.settleRetake?.(this.lost);
          },
          (err: unknown) => {
            if (this.closed) return;
            log.warn('instance lock not taken again yet', {
              ...this.ids,
              instanceId: this.instanceId,
              err,
            });
            this.scheduleRetake();
          },
        );
      },
      backoffMs(++this.attempts, RETAKE),
    );
    this.retake.unref();
  }
}

/** `dmtp [<service>/]<instance> pid <pid>@<host>`, cut to what PostgreSQL keeps. */
function applicationName(instanceId: string, service?: string): string {
  const who = service ? `${service}/${instanceId}` : instanceId;
  return `dmtp ${who} pid ${process.pid}@${hostname()}`.slice(0, MAX_APPLICATION_NAME);
}

function describe(h: HolderRow | undefined): string {
  if (!h) return 'held by a session that ended meanwhile: try again';
  const client = h.addr ? `, client ${h.addr}:${h.port}` : '';
  const since = h.since ? `, since ${h.since.toISOString()}` : '';
  return `held by PostgreSQL backend ${h.pid}, application '${h.application_name}'${client}${since}`;
}

/** `c.end()`, or the socket destroyed once `ms` passed (a database gone silent never answers the goodbye). */
async function endWithin(c: Client, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      (c as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
      resolve();
    }, ms);
  });
  await Promise.race([c.end().catch(() => undefined), late]);
  clearTimeout(timer);
}
