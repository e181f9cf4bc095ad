/**
 * One transaction as the initiator holds it: its context (xid, owner, deadline, branches, staged events), the
 * calls made inside `tx.run()`, and the way it ends. `commit()`/`rollback()` resolve with the typed outcome and
 * are idempotent (a second call answers the first outcome).
 */
import {
  AbortedError,
  DmtpError,
  dmtpTracer,
  endSpanWith,
  FailedPreconditionError,
  logger,
  ResourceExhaustedError,
  SPAN_ATTRIBUTES,
  type Clock,
} from '../common';
import { status as Status } from '@grpc/grpc-js';
import { context, propagation, SpanStatusCode, trace } from '@opentelemetry/api';
import { TxState } from '../proto/gen/dmtp/v1/types';
import {
  EventTooLargeError,
  loggedEventBytes,
  MAX_LOGGED_EVENT_BYTES,
  stagedEventBytes,
  stageEvent,
  toInputError,
} from '../events';
import { runInTx, whenIdle, type TxContext } from './context';
import { withXid } from './errors';
import type { CoordinatorClients } from './coordinator-client';
import type { TxOutcome } from './outcome';

const log = logger('txapi:tx');

/** What `tx.publish` stages: the value is JSON-encoded unless it is bytes (Buffer / Uint8Array). */
export interface PublishMessage {
  key?: string | Buffer;
  value: unknown;
  headers?: Record<string, string>;
}

/** What a Tx needs from the Dmtp that made it. */
export interface TxDeps {
  clients: CoordinatorClients;
  clock: Clock;
  initiator: string;
  commitTimeoutMs: number;
  rollbackTimeoutMs: number;
  maxEventsPerTx: number;
  maxEventBytes: number;
  /** OpenTelemetry spans for commit and rollback, trace context in staged events' headers (DmtpOptions.tracing). */
  tracing?: boolean;
  /**
   * Told once the transaction's commit or rollback has its outcome (the Dmtp's running set and its stats); no
   * outcome when the attempt threw instead.
   */
  ended?(xid: string, outcome?: TxOutcome): void;
  /** Told when it committed without the coordinator (nothing to commit), which would answer it aborted. */
  committedLocally?(xid: string): void;
}

/** Statuses by which the coordinator answered "no" before any commit decision: the transaction is aborted. */
const DEFINITE_NO: readonly number[] = [
  Status.INVALID_ARGUMENT,
  Status.FAILED_PRECONDITION,
  Status.NOT_FOUND,
  Status.RESOURCE_EXHAUSTED,
  Status.ABORTED,
];

export class Tx {
  private ending: Promise<TxOutcome> | undefined;
  private settled: TxOutcome | undefined;
  /** @internal Run by `transaction()`, which commits when the block returns: `commit()` is refused. */
  managed = false;

  constructor(
    private readonly ctx: TxContext,
    private readonly timeoutMs: number,
    private readonly deps: TxDeps,
    /** A joined view: the outer block owns commit. */
    readonly joined = false,
  ) {}

  get xid(): string {
    return this.ctx.xid;
  }

  get deadlineAtMs(): number {
    return this.ctx.deadlineAtMs;
  }

  /** The outcome once commit/rollback finished; undefined while the transaction runs. */
  get outcome(): TxOutcome | undefined {
    return this.settled;
  }

  /** Why the transaction will roll back whatever the block does (a joined block threw, an uncertain call), if so. */
  get rollbackOnly(): string | undefined {
    return this.ctx.rollbackOnly;
  }

  /** Branches reported so far by the calls made in this transaction. */
  get branches(): readonly { branchId: string; service: string; resource: string }[] {
    return this.ctx.branches;
  }

  /** Runs `fn` inside the transaction: calls it makes through DMTP's client (or txGrpcInterceptor) enlist. */
  run<T>(fn: () => T): T {
    return runInTx(this.ctx, fn);
  }

  /**
   * Stages an event, published by the coordinator if and only if the transaction commits. The event is
   * validated and encoded here (events/ `stageEvent`: JSON unless the value is bytes), so bad input fails this
   * call with a typed error — InvalidTopicError, NotSerialisableError or EventTooLargeError (`details.reason`,
   * and the xid in `err.xid`) — and stages nothing, instead of reaching the relay.
   */
  publish(topic: string, message: PublishMessage): void {
    if (this.ctx.role !== 'initiator') {
      throw new FailedPreconditionError(`transaction ${this.xid}: only the initiator stages events`, {
        details: { xid: this.xid },
      });
    }
    this.assertActive('publish');
    const { maxEventsPerTx, maxEventBytes } = this.deps;
    const events = this.ctx.events;
    if (events.length >= maxEventsPerTx) {
      throw withXid(
        new ResourceExhaustedError(
          `transaction ${this.xid} already stages ${events.length} events: the maximum is ${maxEventsPerTx}`,
          { details: { xid: this.xid, topic, maxEventsPerTx } },
        ),
        this.xid,
      );
    }
    let staged;
    try {
      staged = stageEvent(topic, this.deps.tracing ? withTraceContext(message) : message, events.length);
    } catch (err) {
      throw withXid(toInputError(err), this.xid);
    }
    // Counted over the transaction's events (a joined block's included), as the coordinator counts them: running
    // totals in the shared context, so a publish costs the new event only (summing them all each time was
    // quadratic, and up to maxEventsPerTx events blocked the event loop for minutes).
    const bytes = (this.ctx.stagedBytes ?? 0) + stagedEventBytes(staged);
    const logged = (this.ctx.loggedBytes ?? 0) + loggedEventBytes(staged);
    if (bytes > maxEventBytes) {
      throw withXid(
        new EventTooLargeError(
          `transaction ${this.xid} would stage ${bytes} bytes of events with this one: the maximum is ${maxEventBytes}`,
          { details: { xid: this.xid, topic, bytes, maxEventBytes } },
        ),
        this.xid,
      );
    }
    if (logged > MAX_LOGGED_EVENT_BYTES) {
      throw withXid(
        new EventTooLargeError(
          `transaction ${this.xid}'s events would take ${logged} bytes in its decision record with this one (keys ` +
            `and values as base64, headers as JSON): the maximum is ${MAX_LOGGED_EVENT_BYTES}`,
          { details: { xid: this.xid, topic, loggedBytes: logged } },
        ),
        this.xid,
      );
    }
    events.push(staged);
    this.ctx.stagedBytes = bytes;
    this.ctx.loggedBytes = logged;
  }

  commit(): Promise<TxOutcome> {
    if (this.joined) {
      return Promise.reject(
        new FailedPreconditionError(`transaction ${this.xid} was joined: the outer block commits it`, {
          details: { xid: this.xid },
        }),
      );
    }
    if (this.managed) {
      return Promise.reject(
        new FailedPreconditionError(
          `transaction ${this.xid} is run by transaction(): it commits when the block returns (return, or throw to roll back)`,
          { details: { xid: this.xid } },
        ),
      );
    }
    return this.commitNow();
  }

  /** @internal transaction()'s commit once its block returned. */
  commitNow(): Promise<TxOutcome> {
    if (this.ctx.rollbackOnly !== undefined) return this.rollback(this.ctx.rollbackOnly);
    // Checked again once the calls still in flight have answered: one may have made the transaction rollback-only.
    return (this.ending ??= this.finish(
      'commit',
      () => (this.ctx.rollbackOnly !== undefined ? this.doRollback(this.ctx.rollbackOnly) : this.doCommit()),
      true,
    ));
  }

  rollback(reason = 'rolled back by the initiator'): Promise<TxOutcome> {
    if (this.joined) {
      this.ctx.rollbackOnly ??= reason;
      return Promise.resolve({ status: 'aborted', reason });
    }
    return (this.ending ??= this.finish('rollback', () => this.doRollback(reason)));
  }

  private assertActive(what: string): void {
    if (!this.ctx.active) {
      throw new FailedPreconditionError(`transaction ${this.xid} is ending: cannot ${what}`, {
        details: { xid: this.xid },
      });
    }
  }

  private finish(
    what: 'commit' | 'rollback',
    fn: () => Promise<TxOutcome>,
    waitForCalls = false,
  ): Promise<TxOutcome> {
    this.ctx.active = false;
    if (!this.deps.tracing) return this.settle(fn, waitForCalls);
    // A span `dmtp.commit` / `dmtp.rollback`: a commit that does not commit is its error.
    const span = dmtpTracer().startSpan(`dmtp.${what}`, { attributes: { [SPAN_ATTRIBUTES.xid]: this.xid } });
    const settled = context.with(trace.setSpan(context.active(), span), () => this.settle(fn, waitForCalls));
    return endSpanWith(span, settled, (outcome) => {
      span.setAttributes({
        [SPAN_ATTRIBUTES.outcome]: outcome.status,
        [SPAN_ATTRIBUTES.branches]: this.ctx.branches.length,
        [SPAN_ATTRIBUTES.events]: this.ctx.events.length,
      });
      if (what === 'commit' && outcome.status !== 'committed') {
        const message = 'reason' in outcome ? outcome.reason : outcome.status;
        span.setStatus({ code: SpanStatusCode.ERROR, message });
      }
    });
  }

  private async settle(fn: () => Promise<TxOutcome>, waitForCalls: boolean): Promise<TxOutcome> {
    // Calls still in flight (started but not awaited by the block) may yet report branches that Commit must
    // name; their deadlines are capped by the transaction's, so this wait is bounded. A rollback does not wait:
    // a branch it does not name is rolled back at its deadline all the same.
    if (waitForCalls) await whenIdle(this.ctx);
    try {
      this.settled = await fn();
      return this.settled;
    } finally {
      this.deps.ended?.(this.xid, this.settled);
    }
  }

  private async doCommit(): Promise<TxOutcome> {
    const { branches, events } = this.ctx;
    // Nothing enlisted and nothing staged: nothing to decide, so no round trip (a failed call's branch, if
    // any, is not ours to commit and rolls back at the deadline).
    if (branches.length === 0 && events.length === 0) {
      this.deps.committedLocally?.(this.xid);
      return { status: 'committed' };
    }
    let res;
    try {
      res = await this.deps.clients.commit(
        this.ctx.coordinatorAddress,
        {
          xid: this.xid,
          branches,
          events,
          timeoutMs: this.timeoutMs,
          initiator: this.deps.initiator,
          labels: {},
          // Sent once, never retried: no decision can exist yet, so the coordinator reads nothing for it.
          firstAttempt: true,
        },
        this.deps.commitTimeoutMs,
      );
    } catch (err) {
      const code = err instanceof DmtpError ? err.code : Status.UNKNOWN;
      if (err instanceof DmtpError && err.details.notSent === true) {
        // Never reached the coordinator: nothing can have been decided (presumed abort).
        const reason = `commit was not sent: ${(err as Error).message}`;
        await this.tellRollback(reason);
        return { status: 'aborted', reason };
      }
      if (DEFINITE_NO.includes(code)) {
        const reason = `coordinator refused commit: ${(err as Error).message}`;
        await this.tellRollback(reason);
        return { status: 'aborted', reason };
      }
      log.warn('commit outcome unknown', { xid: this.xid, err: err as Error });
      return { status: 'unknown', reason: (err as Error).message };
    }
    switch (res.state) {
      case TxState.TX_STATE_COMMITTED:
      case TxState.TX_STATE_COMMITTING:
        return { status: 'committed' };
      case TxState.TX_STATE_ABORTED:
      case TxState.TX_STATE_ABORTING:
        return { status: 'aborted', reason: res.abortReason || 'aborted by the coordinator' };
      default:
        return { status: 'unknown', reason: `coordinator answered state ${res.state}` };
    }
  }

  private async doRollback(reason: string): Promise<TxOutcome> {
    const known = this.ctx.branches.length;
    await this.tellRollback(reason);
    // Calls still in flight (a sibling of the call that failed, under Promise.all) may yet report branches: once
    // they have answered, those are rolled back too, now rather than at their deadline (their locks held till then).
    void whenIdle(this.ctx).then(() => {
      if (this.ctx.branches.length > known) return this.tellRollback(reason);
    });
    return { status: 'aborted', reason };
  }

  /**
   * Best effort: the coordinator rolls the known branches back now. If it cannot be reached the transaction is
   * still aborted (presumed abort) and each participant rolls its branch back at the deadline.
   */
  private async tellRollback(reason: string): Promise<void> {
    if (this.ctx.branches.length === 0) return;
    try {
      await this.deps.clients.rollback(
        this.ctx.coordinatorAddress,
        { xid: this.xid, reason, branches: this.ctx.branches, firstAttempt: true },
        this.deps.rollbackTimeoutMs,
      );
    } catch (err) {
      if (!(err instanceof AbortedError))
        log.warn('rollback not delivered', { xid: this.xid, err: err as Error });
    }
  }
}

/**
 * The message with the active trace context in its headers (`traceparent`, `tracestate`), so that the consumers
 * of a committed transaction's event continue the initiator's trace; headers of the application's own win.
 */
function withTraceContext(message: PublishMessage): PublishMessage {
  const carrier: Record<string, string> = {};
  propagation.inject(context.active(), carrier);
  if (Object.keys(carrier).length === 0) return message;
  return { ...message, headers: { ...carrier, ...message.headers } };
}
