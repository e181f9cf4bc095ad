/**
 * The branch store as a `dmtp_branches` table in the participant's own PostgreSQL database: durable with the
 * database, shared by the instances of a service that use the same database (so any of them can finish
 * another's in-doubt branch). A transition is one conditional statement: the UPDATE (or INSERT for a branch
 * never seen) only applies when the current state allows it; a second look tells a duplicate from a
 * forbidden move.
 *
 * A lazy enlist (`{lazy: true}`, a resource whose work is volatile, e.g. an open PostgreSQL transaction) writes
 * no row: after a check that none exists, the `registered` record is held in this process until the branch's
 * next change, which INSERTs the whole record in its new state. That saves one committed statement (a WAL flush)
 * per branch; a crash before it loses only what the crash loses anyway (the open work), and the coordinator's
 * Prepare then finds an unknown branch and votes ABORT, as it would for a `registered` row with its work gone.
 * The check is the caller's own `get()` when it just found nothing (within `ABSENT_FRESH_MS`: the participant
 * looks, then enlists, under the branch's lock), else one more SELECT.
 */
import type { Pool, PoolClient, QueryResult, QueryResultRow } from 'pg';
import { InvalidArgumentError, MAX_TIMER_MS, systemClock, UnavailableError, type Clock } from '../common';
import { checkWholeNumber } from '../common/options';
import {
  applyTransition,
  decideTransition,
  VALID_FROM_ABSENT,
  VALID_TRANSITIONS,
  type BranchKey,
  type BranchPatch,
  type BranchRecord,
  type BranchStatus,
  type BranchStore,
  type InstanceOwner,
  type TransitionOptions,
  type TransitionResult,
  branchKeyString,
} from './branch-store';
import { IllegalBranchTransitionError } from './errors';
import { KeyedLock } from '../common/keyed-lock';
import { PgInstanceLock } from './pg-instance-lock';
import { statementWithin, surviveIdleErrors, withConnection } from './pg-pool';

export interface PgBranchStoreOptions {
  /**
   * A pool on the participant's database; the store does not end it. Not the pool of a PostgreSQL resource:
   * open branches hold that pool's connections until prepare, and the store must still be able to write then.
   */
  pool: Pool;
  /** Table name (default dmtp_branches). */
  table?: string;
  /** Rows deleted per statement when purging (each its own short transaction). */
  purgeBatchRows?: number;
  /**
   * How long the store waits for a connection, and then for each statement's answer (default 10,000 ms). A
   * database that went silent (frozen, or a network that drops its packets) fails the store's calls with
   * UNAVAILABLE instead of holding them, and the branches' locks with them, until TCP gives up (~15 minutes).
   * The connection of a statement not answered in time is closed, not reused. Not applied to the table's
   * creation at `open()` (an index built on a large table takes its time).
   */
  queryTimeoutMs?: number;
  /**
   * Hold a lock on (table, instance id) while open for a participant (default true): a second process opening the
   * table with the same instance id is refused (see pg-instance-lock.ts). It is a session-level advisory lock on a
   * connection of its own, outside the pool: turn it off behind a pooler in transaction mode (PgBouncer), where
   * session locks do not hold.
   */
  instanceLock?: boolean;
  clock?: Clock;
}

const TABLE_RE = /^[a-z_][a-z0-9_]{0,62}$/;
/** A `get()` that found no row stands in for a lazy enlist's existence check this long after it. */
const ABSENT_FRESH_MS = 1_000;
/** Keys remembered as just found absent (the oldest are dropped first). */
const ABSENT_KEYS = 1_024;
/** `queryTimeoutMs` by default: far above a branch record's statements, which take milliseconds. */
const PG_STORE_QUERY_TIMEOUT_MS = 10_000;

interface Row {
  xid: string;
  branch_id: string;
  resource: string;
  status: BranchStatus;
  coordinator: string;
  deadline_at_ms: string;
  reason: string;
  data: Record<string, string>;
  created_at_ms: string;
  updated_at_ms: string;
}

function fromRow(r: Row): BranchRecord {
  return {
    xid: r.xid,
    branchId: r.branch_id,
    resource: r.resource,
    status: r.status,
    coordinatorAddress: r.coordinator,
    deadlineAtMs: Number(r.deadline_at_ms),
    reason: r.reason,
    data: r.data ?? {},
    createdAtMs: Number(r.created_at_ms),
    updatedAtMs: Number(r.updated_at_ms),
  };
}

export class PgBranchStore implements BranchStore {
  private readonly pool: Pool;
  private readonly table: string;
  private readonly purgeBatchRows: number;
  private readonly queryTimeoutMs: number;
  private readonly clock: Clock;
  private readonly instanceLock: boolean;
  /** Held while open for a participant instance. */
  private lock: PgInstanceLock | undefined;
  /** Lazily enlisted branches (always `registered`), not yet in the table: this process's only. */
  private readonly held = new Map<string, BranchRecord>();
  /** Keys a `get()` just found absent, and when: a lazy enlist right after it needs no second look. */
  private readonly absent = new Map<string, number>();
  /** One `setData` at a time per branch (see there). */
  private readonly recording = new KeyedLock();
  /** Connections already made to flush their commits (see `recorded`). */
  private readonly flushing = new WeakSet<PoolClient>();

  constructor(options: PgBranchStoreOptions) {
    this.pool = options.pool;
    surviveIdleErrors(this.pool); // a lost idle connection must not end the participant's process
    this.table = options.table ?? 'dmtp_branches';
    if (!TABLE_RE.test(this.table)) throw new Error(`invalid branch table name '${this.table}'`);
    this.clock = options.clock ?? systemClock;
    this.purgeBatchRows = options.purgeBatchRows ?? 10_000;
    if (!Number.isSafeInteger(this.purgeBatchRows) || this.purgeBatchRows < 1) {
      throw new InvalidArgumentError(
        `PgBranchStore: purgeBatchRows must be a positive integer, not ${options.purgeBatchRows}`,
      );
    }
    this.queryTimeoutMs = options.queryTimeoutMs ?? PG_STORE_QUERY_TIMEOUT_MS;
    checkWholeNumber('PgBranchStore', 'queryTimeoutMs', this.queryTimeoutMs, 1, MAX_TIMER_MS);
    this.instanceLock = options.instanceLock ?? true;
  }

  /**
   * Creates the table and its indexes if missing; opened for a participant (`owner`), also takes the instance's
   * lock: FailedPreconditionError when another process holds it (a twin with the same instance id).
   */
  async open(owner?: InstanceOwner): Promise<void> {
    // Instances of one participant share its database and may start at the same moment: CREATE … IF NOT EXISTS
    // is not safe against a concurrent twin (both see no table, one fails on pg_class's unique index), so the
    // DDL runs under a transaction-scoped advisory lock on the table's name.
    // Its statements are not bounded (an index built on a large table takes its time); the connect is.
    await this.withClient(undefined, async (c) => {
      try {
        await c.query('BEGIN');
        await c.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`dmtp-branch-store:${this.table}`]);
        await c.query(`CREATE TABLE IF NOT EXISTS ${this.table} (
          xid text NOT NULL,
          branch_id text NOT NULL,
          resource text NOT NULL,
          status text NOT NULL,
          coordinator text NOT NULL,
          deadline_at_ms bigint NOT NULL,
          reason text NOT NULL,
          data jsonb NOT NULL,
          created_at_ms bigint NOT NULL,
          updated_at_ms bigint NOT NULL,
          PRIMARY KEY (xid, branch_id))`);
        await c.query(
          `CREATE INDEX IF NOT EXISTS ${this.table}_open ON ${this.table} (status)
           WHERE status IN ('registered', 'prepared')`,
        );
        // Purging finds the old final rows by it instead of reading the whole table every round.
        await c.query(
          `CREATE INDEX IF NOT EXISTS ${this.table}_final ON ${this.table} (updated_at_ms)
           WHERE status IN ('committed', 'rolled_back')`,
        );
        await c.query('COMMIT');
      } catch (err) {
        await c.query('ROLLBACK').catch(() => undefined);
        throw err;
      }
    });
    if (owner && this.instanceLock) {
      this.lock = await PgInstanceLock.take({
        pool: this.pool,
        what: `branch store ${this.table}`,
        ids: { table: this.table },
        scope: `branch-store:${this.table}`,
        owner,
        timeoutMs: this.queryTimeoutMs,
      });
    }
  }

  async close(): Promise<void> {
    this.held.clear(); // their work is volatile: it ends with this process's use of the store
    await this.lock?.release(); // the pool belongs to the caller
    this.lock = undefined;
  }

  async get(key: BranchKey): Promise<BranchRecord | undefined> {
    const k = branchKeyString(key);
    const held = this.held.get(k);
    if (held) return held;
    const startedAtMs = this.clock.now();
    const rec = await this.read(key);
    if (!rec) {
      this.absent.delete(k);
      this.absent.set(k, startedAtMs);
      if (this.absent.size > ABSENT_KEYS) this.absent.delete(this.absent.keys().next().value!);
    }
    return rec;
  }

  /** No row for `key`: just seen by a `get()` (and nothing written since), or by a SELECT now. */
  private async isAbsent(key: BranchKey, k: string): Promise<boolean> {
    const seenAtMs = this.absent.get(k);
    this.absent.delete(k);
    if (seenAtMs !== undefined && this.clock.now() - seenAtMs < ABSENT_FRESH_MS) return true;
    return (await this.read(key)) === undefined;
  }

  private async read(key: BranchKey): Promise<BranchRecord | undefined> {
    const r = await this.query<Row>(
      `SELECT * FROM ${this.table} WHERE xid = $1 AND branch_id = $2`,
      [key.xid, key.branchId],
      key,
    );
    return r.rows[0] && fromRow(r.rows[0]);
  }

  async transition(
    key: BranchKey,
    to: BranchStatus,
    patch: BranchPatch = {},
    options: TransitionOptions = {},
  ): Promise<TransitionResult> {
    const k = branchKeyString(key);
    const held = this.held.get(k);
    const lazyEnlist = options.lazy === true && to === 'registered' && !held;
    if (!lazyEnlist) this.absent.delete(k); // a write may follow: what get() saw no longer holds
    if (held) {
      if (decideTransition(key, held.status, to) === 'noop') return { record: held, changed: false };
      const ins = await this.insertHeld(k, held, applyTransition(key, held, to, patch, this.clock.now()));
      if (ins) return { record: ins, changed: true };
      // A row appeared meanwhile (not by this process's participant, which holds the branch's lock): the
      // general path below decides against it, with everything the held record knew.
      patch = { ...recordPatch(held), ...patch, data: { ...held.data, ...patch.data } };
    } else if (lazyEnlist && (await this.isAbsent(key, k))) {
      const rec = applyTransition(key, undefined, to, patch, this.clock.now());
      this.held.set(k, rec);
      return { record: rec, changed: true };
    }
    return this.write(key, to, patch);
  }

  /** A held branch's first durable change: the whole record, in its new state; undefined if a row exists. */
  private async insertHeld(
    k: string,
    held: BranchRecord,
    next: BranchRecord,
  ): Promise<BranchRecord | undefined> {
    this.held.delete(k);
    try {
      return await this.insertRecord(next);
    } catch (err) {
      this.held.set(k, held); // nothing was written: the branch is still what it was
      throw err;
    }
  }

  private async write(key: BranchKey, to: BranchStatus, patch: BranchPatch): Promise<TransitionResult> {
    const from = (Object.keys(VALID_TRANSITIONS) as BranchStatus[]).filter((s) =>
      VALID_TRANSITIONS[s].includes(to),
    );
    if (from.length === 0) {
      // Nothing moves to this state but nothing at all (enlisting): try the INSERT first, one statement
      // instead of a futile UPDATE, a SELECT and the INSERT; a row already there takes the general path.
      const ins = await this.insert(key, to, patch);
      if (ins) return { record: ins, changed: true };
    }
    for (let attempt = 0; ; attempt++) {
      const now = this.clock.now();
      const upd = await this.recorded<Row>(
        `UPDATE ${this.table} SET status = $3,
           resource = COALESCE($4, resource), coordinator = COALESCE($5, coordinator),
           deadline_at_ms = COALESCE($6, deadline_at_ms), reason = COALESCE($7, reason),
           data = data || COALESCE($8::jsonb, '{}'::jsonb), updated_at_ms = $9
         WHERE xid = $1 AND branch_id = $2 AND status = ANY($10::text[]) RETURNING *`,
        [
          key.xid,
          key.branchId,
          to,
          patch.resource ?? null,
          patch.coordinatorAddress ?? null,
          patch.deadlineAtMs ?? null,
          patch.reason === undefined ? null : pgText(patch.reason),
          patch.data ? JSON.stringify(patch.data) : null,
          now,
          from,
        ],
        key,
      );
      if (upd.rows[0]) return { record: fromRow(upd.rows[0]), changed: true };
      const current = await this.read(key);
      if (current) {
        decideTransition(key, current.status, to); // throws for a forbidden move
        if (current.status === to) return { record: current, changed: false };
        continue; // changed under us between the two statements: look again
      }
      decideTransition(key, undefined, to); // throws BranchNotFoundError unless a move from nothing
      if (!VALID_FROM_ABSENT.includes(to)) continue;
      const ins = await this.insert(key, to, patch);
      if (ins) return { record: ins, changed: true };
      if (attempt > 3) throw new Error(`branch ${key.branchId} of ${key.xid}: transition kept racing`);
    }
  }

  /**
   * A statement that records a branch's state, on a connection whose commits are flushed before they are
   * acknowledged. With `synchronous_commit = off` (a common per-database or per-role tuning) a "prepared" record
   * could be lost in a database crash while its PREPARE TRANSACTION (always flushed) survived: recovery then
   * rolled back a branch that had voted yes. So each connection is set to `on` the first time, if it was `off`
   * (stronger settings, e.g. `remote_apply`, are left alone).
   */
  private recorded<R extends QueryResultRow>(
    sql: string,
    params: unknown[],
    key: BranchKey,
  ): Promise<QueryResult<R>> {
    // Written only while this process holds its instance (see pg-instance-lock.ts).
    const lock = this.lock;
    if (lock && !lock.held) return lock.whenHeld(key).then(() => this.flushed<R>(sql, params, key));
    return this.flushed<R>(sql, params, key);
  }

  private flushed<R extends QueryResultRow>(
    sql: string,
    params: unknown[],
    key: BranchKey,
  ): Promise<QueryResult<R>> {
    return this.withClient(key, async (c) => {
      if (!this.flushing.has(c)) {
        await this.bounded(
          c,
          `SELECT set_config('synchronous_commit', 'on', false) WHERE current_setting('synchronous_commit') = 'off'`,
          [],
        );
        this.flushing.add(c);
      }
      return this.bounded<R>(c, sql, params);
    });
  }

  /** One statement on a connection of its own, bounded as `recorded`'s are (reads, purges). */
  private query<R extends QueryResultRow>(
    sql: string,
    params: unknown[],
    key?: BranchKey,
  ): Promise<QueryResult<R>> {
    return this.withClient(key, (c) => this.bounded<R>(c, sql, params));
  }

  /** `use` on a connection of the pool: see `withConnection` (a silent database fails with UNAVAILABLE). */
  private withClient<T>(key: BranchKey | undefined, use: (c: PoolClient) => Promise<T>): Promise<T> {
    return withConnection(this.pool, this.queryTimeoutMs, (what) => this.silent(what, key), use);
  }

  private bounded<R extends QueryResultRow>(
    c: PoolClient,
    text: string,
    values: unknown[],
  ): Promise<QueryResult<R>> {
    return statementWithin<R>(c, this.queryTimeoutMs, text, values);
  }

  private silent(what: string, key?: BranchKey): UnavailableError {
    const of = key ? ` (branch ${key.branchId} of ${key.xid})` : '';
    return new UnavailableError(
      `branch store ${this.table}: ${what} within ${this.queryTimeoutMs} ms (queryTimeoutMs)${of}`,
      { details: { table: this.table, ...(key && { xid: key.xid, branchId: key.branchId }) } },
    );
  }

  /** Inserts the branch in state `to` unless a row exists already (then undefined). */
  private insert(key: BranchKey, to: BranchStatus, patch: BranchPatch): Promise<BranchRecord | undefined> {
    return this.insertRecord(applyTransition(key, undefined, to, patch, this.clock.now()));
  }

  private async insertRecord(rec: BranchRecord): Promise<BranchRecord | undefined> {
    const ins = await this.recorded<Row>(
      `INSERT INTO ${this.table} VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)
       ON CONFLICT (xid, branch_id) DO NOTHING RETURNING *`,
      [
        rec.xid,
        rec.branchId,
        rec.resource,
        rec.status,
        rec.coordinatorAddress,
        rec.deadlineAtMs,
        pgText(rec.reason),
        JSON.stringify(rec.data),
        rec.createdAtMs,
        rec.updatedAtMs,
      ],
      rec,
    );
    return ins.rows[0] && fromRow(ins.rows[0]);
  }

  /**
   * One at a time per branch: a handler may record twice in parallel, and while the first INSERTs a held record
   * the second's UPDATE would find no row yet, fail, and get the branch rolled back.
   */
  setData(key: BranchKey, data: Record<string, string>): Promise<BranchRecord> {
    const k = branchKeyString(key);
    return this.recording.run(k, () => this.setDataNow(key, k, data));
  }

  private async setDataNow(key: BranchKey, k: string, data: Record<string, string>): Promise<BranchRecord> {
    this.absent.delete(k);
    const held = this.held.get(k);
    if (held) {
      const ins = await this.insertHeld(
        k,
        held,
        applyTransition(key, held, 'registered', { data }, this.clock.now()),
      );
      if (ins) return ins;
      await this.write(key, 'registered', recordPatch(held)); // a row appeared: decide against it, then update
    }
    const r = await this.recorded<Row>(
      `UPDATE ${this.table} SET data = data || $3::jsonb, updated_at_ms = $4
       WHERE xid = $1 AND branch_id = $2 AND status = 'registered' RETURNING *`,
      [key.xid, key.branchId, JSON.stringify(data), this.clock.now()],
      key,
    );
    if (r.rows[0]) return fromRow(r.rows[0]);
    const current = await this.read(key);
    throw new IllegalBranchTransitionError(
      `branch ${key.branchId} of ${key.xid} is ${current?.status ?? 'unknown'}: cannot record data`,
      { details: { xid: key.xid, branchId: key.branchId } },
    );
  }

  async list(statuses: readonly BranchStatus[]): Promise<BranchRecord[]> {
    const r = await this.query<Row>(`SELECT * FROM ${this.table} WHERE status = ANY($1::text[])`, [statuses]);
    const held = statuses.includes('registered') ? [...this.held.values()] : [];
    return [...held, ...r.rows.map(fromRow)];
  }

  /**
   * Deletes old final rows in batches of `purgeBatchRows`, each its own statement: no long transaction holding
   * an hour of rows' locks. The predicate is the `_final` index's, spelled out so the planner can use it.
   */
  async purge(beforeMs: number): Promise<number> {
    let n = 0;
    for (;;) {
      const r = await this.query(
        `DELETE FROM ${this.table} WHERE ctid = ANY(ARRAY(
           SELECT ctid FROM ${this.table}
           WHERE status IN ('committed', 'rolled_back') AND updated_at_ms < $1 LIMIT $2))`,
        [beforeMs, this.purgeBatchRows],
      );
      n += r.rowCount ?? 0;
      if ((r.rowCount ?? 0) < this.purgeBatchRows) return n;
    }
  }
}

/** What a record says besides its status, as a patch (a held record's fields carried onto the general path). */
function recordPatch(r: BranchRecord): BranchPatch {
  return {
    resource: r.resource,
    coordinatorAddress: r.coordinatorAddress,
    deadlineAtMs: r.deadlineAtMs,
    reason: r.reason || undefined,
    data: r.data,
  };
}

/** Text PostgreSQL can store: a NUL (which it refuses in text) becomes U+FFFD (a reason from the wire may hold one). */
function pgText(s: string): string {
  return s.includes('\0') ? s.replace(/\0/g, '\uFFFD') : s;
}
