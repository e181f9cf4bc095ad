/**
 * The initiator's entry point: `createDmtp(options)`, then `dmtp.transaction(async (tx) => …)` or the explicit
 * `begin()` / `tx.commit()` / `tx.rollback()`. An xid is minted locally for a coordinator picked once per
 * transaction (no begin round trip); the coordinator hears of the transaction only at Commit, with the branches
 * the business calls reported in their trailers.
 */
import {
  DmtpError,
  dmtpTracer,
  endSpanWith,
  FailedPreconditionError,
  InvalidArgumentError,
  isAddress,
  LABEL_MAX_CHARS,
  logger,
  MAX_TIMER_MS,
  mintXid,
  NotFoundError,
  ownerOf,
  SPAN_ATTRIBUTES,
  systemClock,
  UnavailableError,
  validateOwnerId,
  type Clock,
} from '../common';
import { context, trace, type Span } from '@opentelemetry/api';
import { Outcome } from '../proto/gen/dmtp/v1/types';
import { takesCalls } from '../registry/service-view';
import type { Registry } from '../registry/types';
import type { ClientMiddleware } from '../rpc/middleware';
import { txClientMiddleware, txGrpcInterceptor } from './client-middleware';
import { currentTx, runOutsideTx, type TxContext } from './context';
import { CoordinatorClients } from './coordinator-client';
import {
  NestedTransactionError,
  TransactionAbortedError,
  TransactionOutcomeUnknownError,
  withXid,
} from './errors';
import type { TxOutcome } from './outcome';
import { Tx, type TxDeps } from './tx';
import { checkWholeNumber, withoutUndefined } from '../common/options';
import { STAGING_LIMITS } from '../events';
import { coordinatorAddressOf, COORDINATOR_SERVICES } from './coordinator-routes';
import { CONTEXT_LIMITS } from './tx-metadata';
import type { TlsOptions } from '../rpc/tls';

/** Size of the running set at which transactions abandoned by their callers are looked for. */
const RUNNING_SWEEP_AT = 10_000;

/**
 * Local commits (no branch, no event: the coordinator never hears of them) that `outcomeOf` answers from memory,
 * newest kept, oldest dropped. Past it the coordinator is asked and, never having heard of the xid, answers
 * aborted (presumed abort).
 */
export const LOCAL_COMMITS_KEPT = 10_000;

const checkCount = (name: string, value: number, max: number) =>
  checkWholeNumber('createDmtp', name, value, 1, max);

export interface CoordinatorTarget {
  /** The coordinator's id (its registry instance id): the owner named in the xids minted for it. */
  id: string;
  /** host:port */
  address: string;
}

export interface DmtpOptions {
  /** A fixed coordinator. Without it one is picked from `registry` for each transaction. */
  coordinator?: CoordinatorTarget;
  registry?: Registry;
  /** Registry name of the coordinators. */
  coordinatorService?: string;
  /**
   * Registry name of the ownership routes (HA): instance `<owner>` is the address answering for owner's
   * transactions now — the owner itself, or the coordinator that took them over after it failed.
   */
  ownerService?: string;
  /** Name of the initiating service, for operators. */
  initiator?: string;
  /** Timeout of a transaction when `begin`/`transaction` give none. */
  defaultTimeoutMs?: number;
  /** How long to wait for the coordinator's answer to Commit (phase 1 + the durable decision). */
  commitTimeoutMs?: number;
  rollbackTimeoutMs?: number;
  /** Timeout of `outcomeOf`. */
  queryTimeoutMs?: number;
  /** Events one transaction may stage, and their bytes: keep equal to the coordinator's (`maxEventsPerTx`, `maxEventBytes`). */
  maxEventsPerTx?: number;
  maxEventBytes?: number;
  clock?: Clock;
  /** TLS to the coordinators (default plaintext): `ca` to trust them, `cert`/`key` for mutual TLS. */
  tls?: TlsOptions;
  /**
   * OpenTelemetry spans (through `@opentelemetry/api`, to the application's SDK): `dmtp.transaction` around each
   * `transaction()` block, `dmtp.commit` / `dmtp.rollback`, each with `dmtp.xid` and `dmtp.outcome`; and the trace
   * context in the headers of the events it stages. Default off. Business calls get their spans from rpc's
   * `tracingClientMiddleware`.
   */
  tracing?: boolean;
}

export const DMTP_DEFAULTS = {
  coordinatorService: COORDINATOR_SERVICES.coordinator,
  ownerService: COORDINATOR_SERVICES.owner,
  initiator: '',
  defaultTimeoutMs: 30_000,
  commitTimeoutMs: 30_000,
  rollbackTimeoutMs: 5_000,
  queryTimeoutMs: 5_000,
  maxEventsPerTx: STAGING_LIMITS.maxEventsPerTx,
  maxEventBytes: STAGING_LIMITS.maxEventBytes,
  tracing: false,
};

export interface BeginOptions {
  timeoutMs?: number;
}

export interface TransactionOptions extends BeginOptions {
  /**
   * Inside a transaction still running: run the block as part of it (the outer block commits, under the outer
   * transaction's deadline, so `timeoutMs` is only checked) instead of refusing. Outside one, a new transaction.
   */
  join?: boolean;
}

const log = logger('txapi:initiator');

/** What the transactions of one Dmtp came to, counted since it was made (`dmtp.stats`; InitiatorMetrics exports it). */
export interface InitiatorStats {
  /** Committed (by the coordinator, or here with nothing to commit). */
  committed: number;
  /** Rolled back: by the block or `rollback()`, by a participant's vote, a failed call, the deadline. */
  aborted: number;
  /** Commit or rollback with no answer from the coordinator: `outcomeOf(xid)` tells later. */
  unknown: number;
  /** Begun and not yet ended (a transaction its caller dropped counts until it is forgotten, past its deadline). */
  running: number;
}

export class Dmtp {
  private readonly opts: Required<Omit<DmtpOptions, 'coordinator' | 'registry' | 'tls'>> &
    Pick<DmtpOptions, 'coordinator' | 'registry' | 'tls'>;
  private readonly clients: CoordinatorClients;
  private closed = false;
  private readonly deps: TxDeps;
  private pick = 0;
  /**
   * Transactions begun here whose commit or rollback has no outcome yet, with their deadlines: `outcomeOf`
   * answers 'pending' for them without asking (the coordinator has not heard of them, and would presume abort).
   */
  private readonly running = new Map<string, number>();
  private sweepRunningAt = RUNNING_SWEEP_AT;
  /** Transactions committed here with nothing to commit, oldest first (at most LOCAL_COMMITS_KEPT). */
  private readonly localCommits = new Set<string>();
  private readonly ends = { committed: 0, aborted: 0, unknown: 0 };

  /** Middleware for DMTP's client (rpc/): carries the context of the current transaction. */
  readonly clientMiddleware: ClientMiddleware = txClientMiddleware;
  /** The same for plain grpc-js clients (`interceptors: [dmtp.grpcInterceptor]`). */
  readonly grpcInterceptor = txGrpcInterceptor;

  constructor(options: DmtpOptions) {
    checkShape(options);
    this.opts = { ...DMTP_DEFAULTS, clock: systemClock, ...withoutUndefined(options) };
    if (typeof this.opts.clock?.now !== 'function') {
      throw invalidOption('clock', 'must have now() (a Clock; leave it out for the system clock)');
    }
    // Checked once here, not found out by the first transaction (a NaN from an unset environment variable).
    checkCount('defaultTimeoutMs', this.opts.defaultTimeoutMs, CONTEXT_LIMITS.maxTxTimeoutMs);
    for (const name of ['commitTimeoutMs', 'rollbackTimeoutMs', 'queryTimeoutMs'] as const) {
      checkCount(name, this.opts[name], MAX_TIMER_MS);
    }
    if (typeof this.opts.tracing !== 'boolean') throw invalidOption('tracing', 'must be true or false');
    this.clients = new CoordinatorClients({ tls: this.opts.tls, tracing: this.opts.tracing });
    checkCount('maxEventsPerTx', this.opts.maxEventsPerTx, 1_000_000);
    checkCount('maxEventBytes', this.opts.maxEventBytes, 1024 ** 3);
    this.deps = {
      clients: this.clients,
      clock: this.opts.clock,
      initiator: this.opts.initiator,
      commitTimeoutMs: this.opts.commitTimeoutMs,
      rollbackTimeoutMs: this.opts.rollbackTimeoutMs,
      maxEventsPerTx: this.opts.maxEventsPerTx,
      maxEventBytes: this.opts.maxEventBytes,
      tracing: this.opts.tracing,
      ended: (xid, outcome) => {
        this.running.delete(xid);
        if (outcome && outcome.status !== 'pending') this.ends[outcome.status]++;
      },
      committedLocally: (xid) => this.rememberLocalCommit(xid),
    };
    log.debug('created', { ...this.opts, registry: !!options.registry, clock: undefined });
  }

  /**
   * Starts a transaction; calls made inside `tx.run(fn)` carry it. Refused inside another transaction that is
   * still running; one that has ended (work its block left behind: a timer, a loop started there) is no outer one.
   */
  async begin(options: BeginOptions = {}): Promise<Tx> {
    // Its coordinator clients are closed: a transaction begun now could run its calls but never commit or roll back.
    if (this.closed)
      throw new FailedPreconditionError('this Dmtp client is closed: no transaction can begin');
    const outer = runningTx();
    if (outer) {
      throw new NestedTransactionError(`already inside transaction ${outer.xid}`, {
        details: { xid: outer.xid },
      });
    }
    const timeoutMs = options.timeoutMs ?? this.opts.defaultTimeoutMs;
    // Participants refuse a transaction longer than this (and the coordinator's default is the same).
    checkWholeNumber('begin', 'timeoutMs', timeoutMs, 1, CONTEXT_LIMITS.maxTxTimeoutMs);
    const target = await this.pickCoordinator();
    const now = this.opts.clock.now();
    this.forgetAbandoned(now);
    const ctx = {
      xid: mintXid(target.id, now),
      coordinatorAddress: target.address,
      deadlineAtMs: now + timeoutMs,
      role: 'initiator' as const,
      branches: [],
      events: [],
      active: true,
    };
    this.running.set(ctx.xid, ctx.deadlineAtMs);
    return new Tx(ctx, timeoutMs, this.deps);
  }

  /**
   * A Tx never committed nor rolled back (dropped by its caller) would stay in `running` for good: past its
   * deadline and the longest Commit wait it can no longer commit, so it is dropped. Looked for each time the set
   * doubles, so many transactions running at once cost no walk per begin.
   */
  private forgetAbandoned(now: number): void {
    if (this.running.size < this.sweepRunningAt) return;
    for (const [xid, deadlineAtMs] of this.running) {
      if (deadlineAtMs + this.opts.commitTimeoutMs < now) this.running.delete(xid);
    }
    this.sweepRunningAt = Math.max(RUNNING_SWEEP_AT, this.running.size * 2);
  }

  /**
   * Runs `block` as one transaction: commits when it returns (resolving with its value), rolls back when it
   * throws (rethrowing the original error with `xid` attached). A commit that does not happen rejects with
   * TransactionAbortedError (`outcome.reason`) or TransactionOutcomeUnknownError (ask `outcomeOf(xid)`).
   * Inside a transaction still running it is refused, or with `{ join: true }` runs as part of that one, under
   * its deadline. Started from work a transaction that has ended left behind (a timer or background loop started
   * in its block), it is a transaction of its own; with `{ join: true }` there it is refused
   * (FailedPreconditionError): that work meant to be part of the ended transaction — a `Promise.all` sibling
   * still running when its outer block threw — and committing it on its own would apply half of an operation
   * that was rolled back. Start such loops with `runOutsideTx`, or without `join`.
   */
  async transaction<T>(block: (tx: Tx) => Promise<T> | T, options: TransactionOptions = {}): Promise<T> {
    if (typeof block !== 'function') {
      throw new InvalidArgumentError(`transaction(block): block must be a function, not ${typeof block}`);
    }
    // Its context stays with what its block started, for good: run outside it, or every call and every
    // transaction begun from there would be refused as made in (or nested in) the ended transaction.
    const ended = currentTx();
    if (ended?.active === false) {
      if (options.join) {
        throw new FailedPreconditionError(
          `transaction ${ended.xid}, which this block would join, has ended: work its block left running cannot ` +
            'be part of it (start a loop with runOutsideTx, or without { join: true }, to run transactions of its own)',
          { details: { xid: ended.xid } },
        );
      }
      return runOutsideTx(() => this.transaction(block, options));
    }
    const outer = runningTx();
    if (outer) {
      if (!options.join) {
        throw new NestedTransactionError(
          `already inside transaction ${outer.xid}: pass { join: true } to run as part of it`,
          { details: { xid: outer.xid } },
        );
      }
      // Only checked: the outer transaction's deadline is the joined block's, but a bad value is still a mistake.
      if (options.timeoutMs !== undefined) {
        checkWholeNumber('transaction', 'timeoutMs', options.timeoutMs, 1, CONTEXT_LIMITS.maxTxTimeoutMs);
      }
      const joined = new Tx(outer, 0, this.deps, true);
      try {
        return await joined.run(() => block(joined));
      } catch (err) {
        // What the joined block did before it threw is in the outer transaction's branches: even if the outer
        // block catches the error, committing would apply half of it.
        outer.rollbackOnly ??= `a joined block threw: ${(err as Error)?.message ?? String(err)}`;
        throw err;
      }
    }
    if (!this.opts.tracing) return this.runManaged(block, options);
    const span = dmtpTracer().startSpan('dmtp.transaction');
    return endSpanWith(
      span,
      context.with(trace.setSpan(context.active(), span), () => this.runManaged(block, options, span)),
    );
  }

  /** A new transaction running `block`, committed when it returns (`transaction()`, not joined). */
  private async runManaged<T>(
    block: (tx: Tx) => Promise<T> | T,
    options: TransactionOptions,
    span?: Span,
  ): Promise<T> {
    const tx = await this.begin(options);
    tx.managed = true;
    span?.setAttribute(SPAN_ATTRIBUTES.xid, tx.xid);
    let value: T;
    try {
      value = await tx.run(() => block(tx));
    } catch (err) {
      await tx.rollback(`the transaction block threw: ${(err as Error)?.message ?? String(err)}`);
      span?.setAttribute(SPAN_ATTRIBUTES.outcome, 'aborted');
      throw withXid(err, tx.xid);
    }
    const outcome = await tx.commitNow();
    span?.setAttribute(SPAN_ATTRIBUTES.outcome, outcome.status);
    if (outcome.status === 'committed') return value;
    if (outcome.status === 'aborted') throw new TransactionAbortedError(tx.xid, outcome);
    const reason = outcome.status === 'unknown' ? outcome.reason : 'no decision';
    throw new TransactionOutcomeUnknownError(tx.xid, new UnavailableError(reason));
  }

  /**
   * What became of `xid`. A transaction begun by this Dmtp whose commit or rollback has not finished is 'pending';
   * one it committed with nothing to commit (no branch, no event: the coordinator never heard of it) is
   * 'committed', for the last LOCAL_COMMITS_KEPT of them. Otherwise its owning coordinator is asked; an xid it
   * never heard of is aborted (presumed abort) — and stays aborted: a Commit for it that arrives after the answer
   * is refused. So ask another process's transaction only once it should have ended (its initiator's `commit()`
   * returned, or its deadline passed): asked while it runs, it is aborted. Errors carry the xid (`err.xid`).
   */
  async outcomeOf(xid: string): Promise<TxOutcome> {
    if (this.running.has(xid)) return { status: 'pending' };
    if (this.localCommits.has(xid)) return { status: 'committed' };
    let o: Outcome;
    try {
      o = await this.clients.queryOutcome(
        await this.addressOf(ownerOf(xid)),
        xid,
        '',
        this.opts.queryTimeoutMs,
      );
    } catch (err) {
      if (err instanceof DmtpError) err.details.xid ??= xid;
      throw withXid(err, xid);
    }
    switch (o) {
      case Outcome.OUTCOME_COMMIT:
        return { status: 'committed' };
      case Outcome.OUTCOME_ABORT:
        return { status: 'aborted', reason: 'aborted (as the coordinator reports)' };
      case Outcome.OUTCOME_PENDING:
        return { status: 'pending' };
      default:
        return { status: 'unknown', reason: `coordinator answered outcome ${o}` };
    }
  }

  private rememberLocalCommit(xid: string): void {
    this.localCommits.add(xid);
    if (this.localCommits.size > LOCAL_COMMITS_KEPT) {
      this.localCommits.delete(this.localCommits.values().next().value as string);
    }
  }

  /** What this Dmtp's transactions came to so far: a fresh object each time. */
  get stats(): InitiatorStats {
    return { ...this.ends, running: this.running.size };
  }

  /** Name of the initiating service (`initiator` option; '' when not given). */
  get initiator(): string {
    return this.opts.initiator;
  }

  /** Closes the coordinator connections. */
  close(): void {
    this.closed = true;
    this.clients.close();
  }

  private async pickCoordinator(): Promise<CoordinatorTarget> {
    if (this.opts.coordinator) return this.opts.coordinator;
    const live = (await this.opts.registry!.instances(this.opts.coordinatorService)).filter(takesCalls);
    if (live.length === 0) {
      throw new UnavailableError(`no live '${this.opts.coordinatorService}' instance in the registry`, {
        details: { service: this.opts.coordinatorService },
      });
    }
    // A coordinator that looks down (its stream broke, or a call to it failed UNAVAILABLE lately) is left out
    // while another is up: its registration outlives it by up to the lease TTL, and a transaction begun with
    // it would do its business calls only to fail at Commit.
    const up = live.filter((i) => !this.clients.isDown(i.address));
    const pool = up.length > 0 ? up : live;
    const i = pool[this.pick++ % pool.length];
    return { id: i.instanceId, address: i.address };
  }

  /**
   * Where the owner's transactions are answered now: with a registry, its route first (after a takeover that is
   * another coordinator than a fixed one, which may be gone), then the fixed coordinator when it is the owner.
   */
  private async addressOf(owner: string): Promise<string> {
    const fixed = this.opts.coordinator?.id === owner ? this.opts.coordinator.address : undefined;
    if (!this.opts.registry) {
      if (fixed) return fixed;
      throw new FailedPreconditionError(
        `coordinator '${owner}' is not the configured one and there is no registry`,
      );
    }
    let routed: string | undefined;
    try {
      routed = await coordinatorAddressOf(this.opts.registry, owner, {
        coordinator: this.opts.coordinatorService,
        owner: this.opts.ownerService,
      });
    } catch (err) {
      if (!fixed) throw err;
    }
    const address = routed ?? fixed;
    if (address) return address;
    throw new NotFoundError(`coordinator '${owner}' is not in the registry`, { details: { owner } });
  }
}

/** The current transaction if it is still running: one that has ended is no outer transaction. */
function runningTx(): TxContext | undefined {
  const ctx = currentTx();
  return ctx?.active ? ctx : undefined;
}

const invalidOption = (name: string, why: string) =>
  new InvalidArgumentError(`createDmtp: ${name} ${why}`, { details: { option: name } });

/**
 * What a wrong option would otherwise break only later: a missing coordinator.id minted every xid for owner
 * 'undefined' (each transaction failed at Commit after its work, and its Rollback was refused too, so its
 * branches held their locks to the deadline); an initiator name over the coordinator's limit failed every
 * Commit; a registry without `instances` failed the first begin with a TypeError.
 */
function checkShape(options: DmtpOptions): void {
  if (typeof options !== 'object' || options === null) {
    throw new InvalidArgumentError(`createDmtp: options must be an object, got ${String(options)}`, {
      details: { option: 'options' },
    });
  }
  const { coordinator, registry, initiator } = options;
  if (!coordinator && !registry) {
    throw new InvalidArgumentError('createDmtp: give `coordinator` or `registry`');
  }
  if (coordinator !== undefined) {
    if (typeof coordinator !== 'object' || coordinator === null) {
      throw invalidOption('coordinator', 'must be { id, address }');
    }
    if (!isAddress(coordinator.address)) {
      throw new InvalidArgumentError(
        `createDmtp: invalid coordinator address '${String(coordinator.address)}'`,
        {
          details: { option: 'coordinator.address' },
        },
      );
    }
    if (typeof coordinator.id !== 'string') {
      throw invalidOption(
        'coordinator.id',
        `must be the coordinator's id (a string), got ${String(coordinator.id)}`,
      );
    }
    try {
      validateOwnerId(coordinator.id);
    } catch (err) {
      throw new InvalidArgumentError(`createDmtp: coordinator.id: ${(err as Error).message}`, {
        details: { option: 'coordinator.id' },
      });
    }
  }
  if (registry !== undefined && typeof (registry as Partial<Registry> | null)?.instances !== 'function') {
    throw invalidOption('registry', 'must be a Registry (it has no instances())');
  }
  if (initiator !== undefined) {
    if (typeof initiator !== 'string')
      throw invalidOption('initiator', `must be a string, got ${typeof initiator}`);
    if (initiator.length > LABEL_MAX_CHARS) {
      throw invalidOption(
        'initiator',
        `is ${initiator.length} characters long: the coordinator takes at most ${LABEL_MAX_CHARS}`,
      );
    }
  }
}

export function createDmtp(options: DmtpOptions): Dmtp {
  return new Dmtp(options);
}
