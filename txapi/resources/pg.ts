/**
 * PostgreSQL as a real two-phase-commit resource. The business handler works in an open transaction on a pg
 * client bound to its branch (`currentPg()`); Prepare is `PREPARE TRANSACTION '<gid>'`, which detaches the
 * transaction from the session so the client goes back to the pool while phase 2 is awaited; Commit is
 * `COMMIT PREPARED`, Rollback `ROLLBACK PREPARED` (or `ROLLBACK` before prepare); a lone branch commits as
 * PREPARE + COMMIT PREPARED too (`onePhaseByPrepare`). A branch that wrote nothing votes READ_ONLY and is simply
 * committed. With `savepointPerCall`, each business call after the first runs after a SAVEPOINT, and a failed one
 * is undone alone (ROLLBACK TO SAVEPOINT) instead of dooming the branch.
 *
 * The gid is `<prefix><xid>|<branchId>`: every character of xids and branch ids is in [A-Za-z0-9._:@-], so the
 * gid needs no quoting and splits at the one '|'; it is at most 200 characters (PostgreSQL's limit).
 * In-doubt branches are the rows of pg_prepared_xacts in this database whose gid has the prefix.
 *
 * An open branch's session is bounded on the database side too (`idle_in_transaction_session_timeout`): PostgreSQL
 * ends a session that sat idle in its transaction past the deadline, freeing its row locks, whatever the process
 * does. The participant's own bound comes at the deadline plus its grace: a handler still running then is
 * abandoned, and its branch's connection closed rather than rolled back on (`RollbackInfo.abandoned`): the handler
 * may be mid-query on it, and a ROLLBACK would queue behind that query.
 */
import { Pool, type PoolClient, type PoolConfig, type QueryResult, type QueryResultRow } from 'pg';
import {
  checkWholeNumber,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  logger,
  MAX_TIMER_MS,
  UnavailableError,
} from '../../common';
import type { BranchKey, BranchRecord, InstanceOwner } from '../branch-store';
import { currentBranch } from '../branch-context';
import type { OnePhaseResult, PrepareVote, Resource, RollbackInfo } from '../resource';
import { connectWithin, isUnanswered, statementWithin, surviveIdleErrors, withConnection } from '../pg-pool';
import { PgInstanceLock } from '../pg-instance-lock';

const log = logger('txapi:pg');

export interface PgResourceOptions {
  /** Resource name (part of branch ids). */
  name: string;
  /** A pool on the participant's database (not ended by the resource), or … */
  pool?: Pool;
  /** … a connection string for a pool the resource owns and ends on stop. */
  connectionString?: string;
  /** Size of the owned pool: open branches hold a connection each until prepare. A whole number ≥ 1. */
  maxConnections?: number;
  /**
   * How long past its transaction's deadline an open branch's session may sit idle in its transaction before
   * PostgreSQL ends the session (`idle_in_transaction_session_timeout`), which rolls the work back and frees its
   * locks; the branch then votes ABORT. It frees the row locks of a handler stuck after writing (waiting on
   * something with no timeout) at the database, however the process fares; the participant itself abandons such a
   * handler at the deadline plus its `deadlineGraceMs`, closing the connection. Idle time between a branch's calls
   * before the deadline is never cut, nor a prepared transaction (no session holds it).
   */
  idleInTransactionGraceMs?: number;
  /**
   * The pool of COMMIT/ROLLBACK PREPARED and the in-doubt query (not ended by the resource). By default the
   * resource makes its own, of two connections, with `pool`'s settings and `connect` listeners. Its connections
   * must act as the role that prepared the transactions (PostgreSQL lets only that role, or a superuser, finish
   * them): `start()` refuses a pair whose `current_user` differs.
   */
  phase2Pool?: Pool;
  /** Start of every DMTP gid in this database: [A-Za-z0-9._-]{1,20}. */
  gidPrefix?: string;
  /**
   * A SAVEPOINT before each business call after a branch's first, so a failed call (a constraint violation, a
   * handler's error) is undone alone and the branch goes on: one more round trip per such call. Off by default:
   * a failed later call then rolls the whole branch back and the transaction aborts (PostgreSQL itself refuses
   * every statement of a transaction after an error, until a savepoint is rolled back to). Each marked call is a
   * subtransaction: a branch of more than 64 writing calls overflows PostgreSQL's per-session subtransaction
   * cache, which slows other sessions' snapshots while it lasts.
   */
  savepointPerCall?: boolean;
  /**
   * How long the resource waits for a connection of its own (the phase-2 pool's) and for the answer to each
   * statement it runs itself: BEGIN, the savepoints, PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED, ROLLBACK, the
   * in-doubt query. A database gone silent (frozen, or a network that drops its packets) then fails them with
   * UNAVAILABLE, or a prepare with an ABORT vote, instead of holding them and the branch's lock until TCP gives up
   * (~15 minutes); the connection is closed, not reused. The business calls' own statements are bounded by
   * `statement_timeout` (the transaction's time left) and the participant's abandoning of a call at its deadline.
   */
  queryTimeoutMs?: number;
  /**
   * Started by a participant, hold a lock on (resource, instance id) in the database (default true): a second
   * process with the same instance id is refused at start, before its recovery could roll back a transaction this
   * one just prepared (see pg-instance-lock.ts). A session-level advisory lock on a connection of its own: turn it
   * off behind a pooler in transaction mode (PgBouncer), where session locks do not hold.
   */
  instanceLock?: boolean;
}

export const PG_DEFAULTS = {
  maxConnections: 10,
  gidPrefix: 'dmtp_',
  idleInTransactionGraceMs: 2_000,
  queryTimeoutMs: 10_000,
};
/** PostgreSQL's own ceiling on max_connections (MAX_BACKENDS): a larger pool could never fill. */
const MAX_CONNECTIONS = 262_143;
/** Connections of the resource's own phase-2 pool (COMMIT/ROLLBACK PREPARED, the in-doubt query). */
const PHASE2_CONNECTIONS = 2;

const GID_PART_RE = /^[A-Za-z0-9._:@-]+$/;
const PREFIX_RE = /^[A-Za-z0-9._-]{1,20}$/;
/** PostgreSQL's gids are shorter than 200 bytes (GIDSIZE, with its terminating zero). */
const MAX_GID = 199;
/** undefined_object: "prepared transaction with identifier … does not exist". */
const NO_SUCH_GID = '42704';

export function gidFor(prefix: string, key: BranchKey): string {
  const gid = `${prefix}${key.xid}|${key.branchId}`;
  if (!GID_PART_RE.test(key.xid) || !GID_PART_RE.test(key.branchId) || gid.length > MAX_GID) {
    throw new InvalidArgumentError(`branch ${key.branchId} of ${key.xid} makes no valid gid`, {
      details: { xid: key.xid, branchId: key.branchId },
    });
  }
  return gid;
}

export function parseGid(prefix: string, gid: string): BranchKey | undefined {
  if (!gid.startsWith(prefix)) return undefined;
  const rest = gid.slice(prefix.length);
  const i = rest.indexOf('|');
  if (i <= 0 || i === rest.length - 1) return undefined;
  return { xid: rest.slice(0, i), branchId: rest.slice(i + 1) };
}

function ignore(): void {}

/**
 * The pg clients of open branches, from begin until prepare or rollback gives them back: `currentPg()` tells a
 * branch of a pgResource from one of another resource by it (its handle could be anything, or nothing).
 */
const branchClients = new WeakSet<PoolClient>();

export class PgResource implements Resource<PoolClient> {
  readonly name: string;
  /** Until PREPARE the work is an open transaction, gone with the connection if the process dies. */
  readonly volatileWork = true;
  /**
   * A lone branch commits as PREPARE TRANSACTION + COMMIT PREPARED, recorded prepared in between: a plain COMMIT
   * whose connection drops before the answer may have committed, and nothing could tell afterwards.
   */
  readonly onePhaseByPrepare = true;
  readonly pool: Pool;
  /**
   * COMMIT/ROLLBACK PREPARED and the in-doubt query run on a small pool of their own: with every connection of
   * `pool` held by open branches blocked on a prepared transaction's locks, its COMMIT PREPARED must not queue
   * behind them (they would wait for it, and it for them, until their statement timeouts).
   */
  private readonly phase2Pool: Pool;
  private readonly ownsPhase2Pool: boolean;
  readonly gidPrefix: string;
  private readonly idleInTransactionGraceMs: number;
  private readonly queryTimeoutMs: number;
  private readonly ownsPool: boolean;
  private readonly instanceLock: boolean;
  /** Held while started by a participant. */
  private lock: PgInstanceLock | undefined;
  /** Set with `savepointPerCall` (the participant undoes a failed later call alone only when both are set). */
  readonly markCall?: (branch: BranchRecord, client: PoolClient | undefined) => Promise<void>;
  readonly undoCall?: (branch: BranchRecord, client: PoolClient | undefined) => Promise<void>;

  constructor(options: PgResourceOptions) {
    this.name = options.name;
    this.instanceLock = options.instanceLock ?? true;
    this.gidPrefix = options.gidPrefix ?? PG_DEFAULTS.gidPrefix;
    if (!PREFIX_RE.test(this.gidPrefix))
      throw new InvalidArgumentError(`invalid gid prefix '${this.gidPrefix}'`);
    // Unchecked, a negative size made every connect wait forever, and 0 or NaN quietly became pg's default.
    if (options.maxConnections !== undefined)
      checkWholeNumber('pgResource', 'maxConnections', options.maxConnections, 1, MAX_CONNECTIONS);
    this.idleInTransactionGraceMs = options.idleInTransactionGraceMs ?? PG_DEFAULTS.idleInTransactionGraceMs;
    checkWholeNumber(
      'pgResource',
      'idleInTransactionGraceMs',
      this.idleInTransactionGraceMs,
      0,
      MAX_TIMER_MS,
    );
    this.queryTimeoutMs = options.queryTimeoutMs ?? PG_DEFAULTS.queryTimeoutMs;
    checkWholeNumber('pgResource', 'queryTimeoutMs', this.queryTimeoutMs, 1, MAX_TIMER_MS);
    if (options.pool) {
      this.pool = options.pool;
      this.ownsPool = false;
    } else {
      if (!options.connectionString)
        throw new InvalidArgumentError('pgResource: give `pool` or `connectionString`');
      this.pool = new Pool({
        connectionString: options.connectionString,
        max: options.maxConnections ?? PG_DEFAULTS.maxConnections,
      });
      this.ownsPool = true;
    }
    surviveIdleErrors(this.pool); // given or owned: a lost idle connection must not end the process
    if (options.phase2Pool) {
      this.phase2Pool = options.phase2Pool;
      this.ownsPhase2Pool = false;
    } else {
      // The same database and settings as `pool` (pg keeps them in `options`), two connections, owned; and the
      // same per-connection set-up (`pool.on('connect', c => c.query('SET ROLE app'))`): a transaction prepared
      // as one role can be finished only by that role.
      const base = (this.pool as unknown as { options: PoolConfig }).options;
      this.phase2Pool = new Pool({ ...base, max: PHASE2_CONNECTIONS });
      for (const l of this.pool.listeners('connect'))
        this.phase2Pool.on('connect', l as (c: PoolClient) => void);
      this.ownsPhase2Pool = true;
    }
    surviveIdleErrors(this.phase2Pool);
    if (options.savepointPerCall) {
      this.markCall = (b, client) => this.onBranch(b, client, 'SAVEPOINT dmtp_call');
      this.undoCall = (b, client) => this.onBranch(b, client, 'ROLLBACK TO SAVEPOINT dmtp_call');
    }
  }

  /** One statement on the branch's open transaction (its client, present between begin and prepare). */
  private async onBranch(branch: BranchRecord, client: PoolClient | undefined, sql: string): Promise<void> {
    if (!client) {
      throw new InternalError(`branch ${branch.branchId} of ${branch.xid} has no open transaction here`, {
        details: { xid: branch.xid, branchId: branch.branchId },
      });
    }
    await this.statement(client, sql, branch);
  }

  /** A statement the resource runs itself on `client`, answered within `queryTimeoutMs` or failed UNAVAILABLE. */
  private async statement(client: PoolClient, sql: string, branch: BranchKey): Promise<QueryResult> {
    try {
      return await statementWithin(client, this.queryTimeoutMs, sql);
    } catch (err) {
      throw isUnanswered(err) ? this.silent('PostgreSQL did not answer', branch) : err;
    }
  }

  /** `use` on a connection of the phase-2 pool, bounded as `statement` (see `withConnection`). */
  private onPhase2<T>(branch: BranchKey | undefined, use: (c: PoolClient) => Promise<T>): Promise<T> {
    return withConnection(this.phase2Pool, this.queryTimeoutMs, (what) => this.silent(what, branch), use);
  }

  private silent(what: string, branch?: BranchKey): UnavailableError {
    const of = branch ? ` (branch ${branch.branchId} of ${branch.xid})` : '';
    return new UnavailableError(
      `resource ${this.name}: ${what} within ${this.queryTimeoutMs} ms (queryTimeoutMs)${of}`,
      { details: { resource: this.name, ...(branch && { xid: branch.xid, branchId: branch.branchId }) } },
    );
  }

  async start(owner?: InstanceOwner): Promise<void> {
    const ask = <R extends QueryResultRow>(p: Pool, sql: string) =>
      withConnection(
        p,
        this.queryTimeoutMs,
        (what) => this.silent(what),
        (c) => statementWithin<R>(c, this.queryTimeoutMs, sql),
      );
    const r = await ask<{ n: string }>(
      this.pool,
      `SELECT setting AS n FROM pg_settings WHERE name = 'max_prepared_transactions'`,
    );
    if (Number(r.rows[0]?.n ?? 0) === 0) {
      throw new InvalidArgumentError(`resource ${this.name}: the database has max_prepared_transactions = 0`);
    }
    const role = async (p: Pool) =>
      (
        await ask<{ u: string; su: boolean }>(
          p,
          `SELECT current_user AS u, current_setting('is_superuser') = 'on' AS su`,
        )
      ).rows[0];
    const [preparing, finishing] = [await role(this.pool), await role(this.phase2Pool)];
    // PostgreSQL lets the role that prepared a transaction finish it, or a superuser.
    if (preparing.u !== finishing.u && !finishing.su) {
      throw new FailedPreconditionError(
        `resource ${this.name}: transactions are prepared as role '${preparing.u}' but would be finished ` +
          `(COMMIT/ROLLBACK PREPARED) as '${finishing.u}', which PostgreSQL refuses: give \`phase2Pool\` connections ` +
          `acting as '${preparing.u}' (or set the role on \`pool\` before making the resource)`,
        { details: { resource: this.name, preparing: preparing.u, finishing: finishing.u } },
      );
    }
    if (owner && this.instanceLock) {
      this.lock = await PgInstanceLock.take({
        pool: this.pool,
        what: `resource ${this.name}`,
        ids: { resource: this.name },
        scope: `resource:${this.gidPrefix}${this.name}`,
        owner,
        timeoutMs: this.queryTimeoutMs,
      });
    }
  }

  async stop(): Promise<void> {
    await this.lock?.release();
    this.lock = undefined;
    if (this.ownsPhase2Pool) await this.phase2Pool.end();
    if (this.ownsPool) await this.pool.end();
  }

  /**
   * Takes a connection and opens the branch's transaction. Waits for a free connection at most until the
   * transaction's deadline (a pool starved by open branches fails the call instead of hanging it), bounds every
   * statement of the branch by the time the transaction has left, and the session's idle time in the transaction
   * by that plus `idleInTransactionGraceMs` (SET LOCAL: both end with the transaction, at PREPARE too).
   */
  async begin(branch: BranchRecord): Promise<PoolClient> {
    gidFor(this.gidPrefix, branch); // a branch that could never be prepared is refused before any work
    if (this.lock && !this.lock.held) await this.lock.whenHeld(branch); // see pg-instance-lock.ts
    const leftMs = Math.ceil(
      Math.max(1, branch.deadlineAtMs > 0 ? branch.deadlineAtMs - Date.now() : 60_000),
    );
    const client = await connectWithin(
      this.pool,
      leftMs,
      () =>
        new UnavailableError(`resource ${this.name}: no free connection before the transaction's deadline`, {
          details: { xid: branch.xid, branchId: branch.branchId },
        }),
    );
    client.on('error', ignore); // a lost connection (an idle timeout's too) surfaces on the next query
    try {
      await this.statement(
        client,
        `BEGIN; SET LOCAL statement_timeout = ${pgMs(leftMs)}; ` +
          `SET LOCAL idle_in_transaction_session_timeout = ${pgMs(leftMs + this.idleInTransactionGraceMs)}`,
        branch,
      );
    } catch (err) {
      this.release(client, err);
      throw err;
    }
    branchClients.add(client);
    return client;
  }

  async prepare(branch: BranchRecord, client: PoolClient | undefined): Promise<PrepareVote> {
    if (!client) return { vote: 'abort', reason: 'no open transaction for this branch' };
    try {
      if (this.lock && !this.lock.held) await this.lock.whenHeld(branch);
      // Fails in a transaction already aborted by an error, which is what we want: vote ABORT.
      const ro = await this.statement(client, 'SELECT txid_current_if_assigned() IS NULL AS ro', branch);
      if ((ro.rows[0] as { ro: boolean }).ro) {
        await this.statement(client, 'COMMIT', branch);
        this.release(client);
        return { vote: 'read_only' };
      }
      const r = await this.statement(
        client,
        `PREPARE TRANSACTION '${gidFor(this.gidPrefix, branch)}'`,
        branch,
      );
      this.release(client);
      // PREPARE in an aborted transaction rolls it back instead (command tag ROLLBACK).
      return r.command === 'ROLLBACK'
        ? { vote: 'abort', reason: 'transaction was aborted' }
        : { vote: 'prepared' };
    } catch (err) {
      await this.abandon(client);
      const ours = err instanceof UnavailableError || err instanceof FailedPreconditionError; // the lock's too
      const reason = ours ? err.message : `PostgreSQL: ${(err as Error).message}`;
      return { vote: 'abort', reason };
    }
  }

  async commit(
    branch: BranchRecord,
    client: PoolClient | undefined,
    onePhase: boolean,
  ): Promise<OnePhaseResult> {
    if (onePhase) {
      // Never asked (onePhaseByPrepare): refuse rather than COMMIT with an outcome a lost answer would hide.
      if (client) await this.abandon(client);
      throw new InternalError(
        `pgResource ${this.name}: a lone branch commits through prepare (onePhaseByPrepare)`,
      );
    }
    await this.onPreparedGid(branch, 'COMMIT PREPARED');
    return { committed: true };
  }

  /**
   * ROLLBACK on the open transaction, or ROLLBACK PREPARED. An abandoned call's client (`info.abandoned`) is closed
   * instead, unused: its handler may be mid-query on it (a ROLLBACK would wait behind that), and pooled again it would
   * take the handler's later statements into another branch. Its session is ended from the phase-2 pool
   * (`pg_terminate_backend`), which rolls the transaction back and frees its locks at once, even mid-statement.
   */
  async rollback(
    branch: BranchRecord,
    client: PoolClient | undefined,
    _reason?: string,
    info?: RollbackInfo,
  ): Promise<void> {
    if (client) {
      if (info?.abandoned) await this.closeAbandoned(client);
      else await this.abandon(client);
      return;
    }
    await this.onPreparedGid(branch, 'ROLLBACK PREPARED');
  }

  async inDoubt(minAgeMs: number): Promise<BranchKey[]> {
    if (this.lock && !this.lock.held) await this.lock.whenHeld();
    const r = await this.onPhase2(undefined, (c) =>
      statementWithin<{ gid: string }>(
        c,
        this.queryTimeoutMs,
        `SELECT gid FROM pg_prepared_xacts
         WHERE database = current_database() AND starts_with(gid, $1)
           AND prepared <= now() - $2::double precision * interval '1 millisecond'`,
        [this.gidPrefix, minAgeMs],
      ),
    );
    const out: BranchKey[] = [];
    for (const { gid } of r.rows) {
      const key = parseGid(this.gidPrefix, gid);
      if (key && key.branchId.startsWith(`${this.name}@`)) out.push(key);
    }
    return out;
  }

  /** COMMIT/ROLLBACK PREPARED; a gid already gone means an earlier attempt did it (phase 2 is idempotent). */
  private async onPreparedGid(
    branch: BranchKey,
    verb: 'COMMIT PREPARED' | 'ROLLBACK PREPARED',
  ): Promise<void> {
    let gid: string;
    try {
      gid = gidFor(this.gidPrefix, branch);
    } catch {
      // No transaction can have been prepared under a gid PostgreSQL would refuse (begin refuses such a branch
      // before any work): nothing to finish. Throwing kept the branch's rollback failing, and the branch open, for good.
      return;
    }
    try {
      await this.onPhase2(branch, (c) => statementWithin(c, this.queryTimeoutMs, `${verb} '${gid}'`));
    } catch (err) {
      if ((err as { code?: string }).code !== NO_SUCH_GID) throw err;
    }
  }

  /** Rolls back an open transaction and returns the client (or drops it when the connection is broken). */
  private async abandon(client: PoolClient): Promise<void> {
    try {
      await statementWithin(client, this.queryTimeoutMs, 'ROLLBACK');
      this.release(client);
    } catch (err) {
      this.release(client, err);
    }
  }

  /**
   * Closes an abandoned call's client, and ends its server session from another connection: a session whose
   * statement is still running (a lock wait, a long query) would otherwise keep the transaction and its row locks
   * until that statement ends. Ending it may be refused (another role, no pg_signal_backend): then the statement's
   * own timeout ends it, as before.
   */
  private async closeAbandoned(client: PoolClient): Promise<void> {
    const pid = (client as PoolClient & { processID?: number }).processID;
    // Ended first, while this client still holds the session: its pid cannot be another session's yet.
    if (typeof pid === 'number') {
      await this.onPhase2(undefined, (c) =>
        statementWithin(c, this.queryTimeoutMs, 'SELECT pg_terminate_backend($1)', [pid]),
      ).catch((err: unknown) => log.warn('could not end an abandoned branch session', { pid, err }));
    }
    this.release(client, true);
  }

  /** Gives the client back to the pool; with `err`, the pool discards it (a broken or ended session). */
  private release(client: PoolClient, err?: unknown): void {
    branchClients.delete(client);
    client.removeListener('error', ignore);
    client.release(err instanceof Error ? err : err === undefined ? undefined : true);
  }
}

export function pgResource(options: PgResourceOptions): PgResource {
  return new PgResource(options);
}

/** A timeout setting in ms, within what PostgreSQL takes (an int of ms). */
function pgMs(ms: number): number {
  return Math.min(ms, MAX_TIMER_MS);
}

/**
 * The pg client of the current branch (inside a business handler of a PostgreSQL resource). Throws
 * FailedPreconditionError outside a branch, in a branch of another kind of resource, and from work the call left
 * behind once it ended (a timer, an un-awaited promise); a client taken during the call and used after it is not
 * covered — it is then outside the transaction, so take it anew where it is used.
 */
export function currentPg(resource?: string): PoolClient {
  const b = currentBranch<PoolClient>(resource);
  if (!branchClients.has(b.handle)) {
    throw new FailedPreconditionError(
      `currentPg(): branch ${b.branchId} of ${b.xid} is on resource '${b.resource}', which is not a ` +
        'PostgreSQL resource (pgResource)',
      { details: { xid: b.xid, branchId: b.branchId, resource: b.resource } },
    );
  }
  return b.handle;
}
