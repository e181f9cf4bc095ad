/**
 * The transaction manager's limits and timings: what a caller passes (ManagerOptions, all optional), the
 * exported DEFAULTS, and the compiled form (every field filled) that the coordinator logs at start.
 */
import { checkWholeNumber, LABEL_MAX_CHARS, withoutUndefined, type BackoffOptions } from '../common';
import { STAGING_LIMITS } from '../events';

export const DEFAULTS = {
  /** Timeout of a transaction begun without one: how long it may stay ACTIVE. */
  defaultTimeoutMs: 30_000,
  /** Largest timeout a Begin or Commit may ask for (INVALID_ARGUMENT above). */
  maxTimeoutMs: 10 * 60_000,
  /**
   * Phase 1: every branch must vote within this, or the transaction aborts. A one-phase commit's Commit call
   * waits this long for the branch's answer, then answers UNAVAILABLE (outcome pending) while it keeps asking.
   */
  prepareTimeoutMs: 5_000,
  /** Deadline of one phase-2 Commit or Rollback call (failures are retried with phase2Backoff). */
  phase2CallTimeoutMs: 5_000,
  /** Retry schedule of phase-2 messages: commits for ever, until each branch acknowledges. */
  phase2Backoff: { initialMs: 50, maxMs: 5_000, multiplier: 2 } as BackoffOptions,
  /**
   * How long an aborted transaction goes on telling an unreachable branch to roll back; 0 (the default): until it
   * acknowledges. Past a bound the branch is left to presumed abort, as after a restart (aborts are not logged):
   * a prepared SDK participant asks and is told ABORT — while someone answers for the owner: with HA, a taken-over
   * owner is retired `retireAfterMs` after its last transaction ended, and a branch back after both still asks in
   * vain. A bound frees the memory (and the `maxInFlight` room) of aborts whose instance is gone for good.
   */
  rollbackRetryMs: 0,
  /** Retry schedule of the outbox relay while the event sink fails (Kafka down). */
  relayBackoff: { initialMs: 100, maxMs: 10_000, multiplier: 2 } as BackoffOptions,
  /** Retry schedule of log writes that must eventually land (the commit decision, record removal). */
  logBackoff: { initialMs: 50, maxMs: 2_000, multiplier: 2 } as BackoffOptions,
  /**
   * How long a Commit call waits for its decision to become durable when the log is failing; after that it
   * answers UNAVAILABLE while the write keeps being retried (the outcome is then PENDING to QueryOutcome).
   */
  decisionTimeoutMs: 10_000,
  /** Branches per transaction (RESOURCE_EXHAUSTED above). */
  maxBranches: 64,
  /** Staged events per transaction (RESOURCE_EXHAUSTED above). */
  maxEventsPerTx: STAGING_LIMITS.maxEventsPerTx,
  /** Bytes of staged events (keys + values + headers) per transaction; they travel in one log record. */
  maxEventBytes: STAGING_LIMITS.maxEventBytes,
  /** Transactions held at once (live ones, not the remembered outcomes); RESOURCE_EXHAUSTED above. */
  maxInFlight: 100_000,
  /** Outcomes of finished transactions remembered for idempotent Commit/Rollback/QueryOutcome. */
  maxRemembered: 50_000,
  /**
   * How long the durable log keeps a finished COMMITTED transaction's outcome (a small marker on an etcd lease
   * rotated every quarter of it, so a marker lives 0.75×–1× of this), for QueryOutcome / Get / a retried
   * Commit after a restart or an HA takeover forgot it in memory. Past it, presumed abort answers ABORT.
   */
  outcomeRetentionSeconds: 3600,
  /** Labels per transaction, and the longest key/value/initiator (INVALID_ARGUMENT above). */
  maxLabels: 32,
  maxLabelChars: LABEL_MAX_CHARS, // shared: initiators refuse a longer name when they are created
  /** Page size of List when the request says 0, and the largest allowed. */
  defaultPageSize: 100,
  maxPageSize: 1000,
  /**
   * Write an undecided PREPARING record (with the branch list) before phase 1, so recovery can roll back
   * branches prepared before a crash instead of waiting for participants to ask (presumed abort). Costs one
   * more group-committed write per two-phase transaction.
   */
  logPrepare: false,
  /**
   * Write a small record before a one-phase commit, so the transaction's outcome survives a coordinator crash:
   * recovery asks the branch again (a repeated one-phase Commit is idempotent) and QueryOutcome answers the
   * truth. Off, a one-phase commit writes nothing, and after a crash in the middle of it QueryOutcome answers
   * ABORT even when the branch committed (presumed abort without a record).
   */
  logOnePhase: true,
};

export type ManagerLimits = typeof DEFAULTS;
export type ManagerOptions = Partial<ManagerLimits>;

/**
 * The options over the defaults, checked: every timing and limit a positive whole number (0 would make every
 * call expire at once — a phase-2 timeout of 0 commits at the commit point and never tells a branch), the
 * default timeout within the largest. INVALID_ARGUMENT naming the option.
 */
export function compileOptions(o: ManagerOptions = {}): ManagerLimits {
  const l = { ...DEFAULTS, ...withoutUndefined(o) };
  const positive = [
    'defaultTimeoutMs',
    'maxTimeoutMs',
    'prepareTimeoutMs',
    'phase2CallTimeoutMs',
    'decisionTimeoutMs',
    'maxBranches',
    'maxEventsPerTx',
    'maxEventBytes',
    'maxInFlight',
    'maxRemembered',
    'outcomeRetentionSeconds',
    'maxLabels',
    'maxLabelChars',
    'defaultPageSize',
    'maxPageSize',
  ] as const;
  for (const k of positive) checkWholeNumber('coordinator', k, l[k], 1, Number.MAX_SAFE_INTEGER);
  checkWholeNumber('coordinator', 'rollbackRetryMs', l.rollbackRetryMs, 0, Number.MAX_SAFE_INTEGER);
  checkWholeNumber('coordinator', 'defaultTimeoutMs', l.defaultTimeoutMs, 1, l.maxTimeoutMs);
  for (const k of ['phase2Backoff', 'relayBackoff', 'logBackoff'] as const) {
    checkWholeNumber('coordinator', `${k}.initialMs`, l[k].initialMs, 1, Number.MAX_SAFE_INTEGER);
    checkWholeNumber('coordinator', `${k}.maxMs`, l[k].maxMs, l[k].initialMs, Number.MAX_SAFE_INTEGER);
  }
  return l;
}
