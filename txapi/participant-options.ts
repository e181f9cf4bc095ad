/**
 * A participant's options in three stages: what the user passes (`ParticipantOptions`), the defaults you can
 * read (`PARTICIPANT_DEFAULTS`), and the compiled, checked `ParticipantConfig` the Participant runs on
 * (`compileParticipantOptions`). `describeConfig` is what the participant logs at start.
 */
import { InvalidArgumentError, MAX_TIMER_MS, systemClock, type Clock } from '../common';
import type { Registry } from '../registry';
import type { BranchStore } from './branch-store';
import { coordinatorAddressOf } from './coordinator-routes';
import { checkWholeNumber, withoutUndefined } from '../common/options';
import type { Resource } from './resource';
import { CONTEXT_LIMITS, type ContextLimits } from './tx-metadata';
import type { TlsOptions } from '../rpc/tls';

export interface ParticipantOptions {
  /** Registry name of this participant service. */
  service: string;
  /** This instance's registry id; part of branch ids, so keep it stable across restarts: [A-Za-z0-9._-]{1,64}. */
  instanceId: string;
  /** host:port this instance serves on (reported in BranchRef). */
  address: string;
  store: BranchStore;
  resources: Resource[];
  /** Which resource a business method works on (undefined: the call does not enlist). Default: the only one. */
  resourceFor?: (method: string) => string | undefined;
  /**
   * The registry, to find the coordinator answering for an xid's owner now: after an HA takeover that is not the
   * coordinator whose address the branch recorded. Used by in-doubt recovery unless `coordinatorAddressFor` is set.
   */
  registry?: Pick<Registry, 'instances'>;
  /**
   * Where the coordinator answering for an owner is now (asked before the address the branch recorded). Default
   * with `registry`: its HA owner route, else its registration (`coordinatorAddressOf`); without: none.
   */
  coordinatorAddressFor?: (ownerId: string) => Promise<string | undefined>;
  /**
   * An unprepared branch is rolled back this long after its transaction's deadline; a business call still running
   * in it then is abandoned (it fails with BusinessCallAbandonedError; its handler runs on, shut out of the branch).
   */
  deadlineGraceMs?: number;
  /**
   * How long `stop()` waits for the business calls under way before it abandons those still running (their branches
   * rolled back, as at the deadline) and goes on stopping. A whole number ≥ 1.
   */
  stopGraceMs?: number;
  /** Period of in-doubt recovery and purging. */
  recoveryIntervalMs?: number;
  /** A prepared branch is in doubt (recovery asks its coordinator) when undecided for this long. */
  inDoubtAfterMs?: number;
  /** Timeout of one QueryOutcome call. */
  queryTimeoutMs?: number;
  /** Final branches are forgotten this long after they ended (longer than any transaction's timeout). */
  retentionMs?: number;
  /** Checks of the context carried by calls. */
  contextLimits?: ContextLimits;
  clock?: Clock;
  /**
   * TLS of the calls this participant makes itself: in-doubt recovery's outcome queries to coordinators (default
   * plaintext). The participant's own server takes its TLS in `startServer({ tls })`.
   */
  tls?: TlsOptions;
  /**
   * OpenTelemetry: in-doubt recovery's outcome queries as CLIENT spans named with the xid, their context sent to
   * the coordinator (default off). The participant's business and phase calls get their spans from rpc's
   * `tracingServerMiddleware` on its server.
   */
  tracing?: boolean;
}

export const PARTICIPANT_DEFAULTS = {
  deadlineGraceMs: 1_000,
  stopGraceMs: 5_000,
  recoveryIntervalMs: 30_000,
  inDoubtAfterMs: 10_000,
  queryTimeoutMs: 3_000,
  retentionMs: 60 * 60_000,
};

const ID_RE = /^[A-Za-z0-9._-]{1,64}$/;
const RESOURCE_RE = /^[A-Za-z0-9._-]{1,24}$/;

export type ParticipantConfig = Required<
  Omit<ParticipantOptions, 'resourceFor' | 'coordinatorAddressFor' | 'registry' | 'tls' | 'tracing'>
> &
  Pick<ParticipantOptions, 'coordinatorAddressFor' | 'tls' | 'tracing'> & {
    resourceFor: (method: string) => string | undefined;
  };

/** Checks the ids and resource names and fills the defaults; InvalidArgumentError names what is wrong. */
export function compileParticipantOptions(options: ParticipantOptions): ParticipantConfig {
  if (!ID_RE.test(options.instanceId)) {
    throw new InvalidArgumentError(`participant: invalid instanceId '${options.instanceId}'`);
  }
  if (options.tracing !== undefined && typeof options.tracing !== 'boolean') {
    throw new InvalidArgumentError(
      `participant: tracing must be true or false, not ${String(options.tracing)}`,
    );
  }
  const names = new Set<string>();
  for (const r of options.resources) {
    if (!RESOURCE_RE.test(r.name))
      throw new InvalidArgumentError(`participant: invalid resource name '${r.name}'`);
    if (names.has(r.name)) throw new InvalidArgumentError(`participant: resource '${r.name}' twice`);
    names.add(r.name);
  }
  const only = options.resources.length === 1 ? options.resources[0].name : undefined;
  const config = {
    ...PARTICIPANT_DEFAULTS,
    contextLimits: CONTEXT_LIMITS,
    clock: systemClock,
    ...withoutUndefined(options),
  };
  // Timers, checked once here: a 0 or NaN recovery interval (an unset environment variable) would run recovery
  // rounds back to back; a retention shorter than a transaction may last would purge a null rollback while a
  // late business call of its transaction could still open a branch nobody prepares.
  // A deadline grace and an in-doubt age may be 0 (none); an interval, a timeout, a retention and the stop grace
  // may not (a stop grace of 0 would abandon every call under way, even one about to finish).
  const timers = [
    ['deadlineGraceMs', 0],
    ['stopGraceMs', 1],
    ['inDoubtAfterMs', 0],
    ['recoveryIntervalMs', 1],
    ['queryTimeoutMs', 1],
    ['retentionMs', 1],
  ] as const;
  for (const [name, min] of timers) checkWholeNumber('participant', name, config[name], min, MAX_TIMER_MS);
  if (config.retentionMs < config.contextLimits.maxTxTimeoutMs) {
    throw new InvalidArgumentError(
      `participant: retentionMs (${config.retentionMs}) must be at least the longest transaction ` +
        `(${config.contextLimits.maxTxTimeoutMs} ms)`,
    );
  }
  return {
    ...config,
    resourceFor: options.resourceFor ?? (() => only),
    coordinatorAddressFor:
      options.coordinatorAddressFor ?? (options.registry ? coordinatorLookup(options.registry) : undefined),
  };
}

function coordinatorLookup(registry: Pick<Registry, 'instances'>) {
  return (owner: string) => coordinatorAddressOf(registry, owner);
}

/** The compiled config as plain values for the start-up log line (no store, clock or functions). */
export function describeConfig(c: ParticipantConfig): Record<string, unknown> {
  return {
    service: c.service,
    instanceId: c.instanceId,
    address: c.address,
    resources: c.resources.map((r) => r.name),
    // A wrapped store (ParticipantMetrics) names what it wraps; a plain object's constructor says nothing.
    store: (c.store as { describe?: () => string }).describe?.() ?? c.store.constructor.name,
    deadlineGraceMs: c.deadlineGraceMs,
    stopGraceMs: c.stopGraceMs,
    recoveryIntervalMs: c.recoveryIntervalMs,
    inDoubtAfterMs: c.inDoubtAfterMs,
    queryTimeoutMs: c.queryTimeoutMs,
    retentionMs: c.retentionMs,
    coordinatorLookup: c.coordinatorAddressFor ? 'yes' : 'recorded address only',
    tls: c.tls ? 'on' : 'off',
    tracing: c.tracing ? 'on' : 'off',
  };
}
