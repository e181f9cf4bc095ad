/**
 * The client helper's options in their stages: what the caller passes (`ClientOptions`), the defaults
 * (`DEFAULTS`, exported as `CLIENT_DEFAULTS`), and the checked numbers the client runs on
 * (`compileClientOptions`).
 *
 * Every number is checked once, when the client is made, because each limit here fails open on a bad value:
 * NaN compares false with everything, so `maxAttempts: NaN` retried until the deadline, a NaN retry budget
 * never ran out, a NaN ejection time ejected nobody, and a NaN backoff never paused. A number read from an unset
 * environment variable is the usual source.
 */
import type { BackoffOptions } from '../common/backoff';
import { InvalidArgumentError } from '../common/errors';
import { withoutUndefined } from '../common/options';
import type { ServiceInstance } from '../registry/types';
import type { ClientMiddleware } from './middleware';
import type { OutlierEjectionOptions } from './outlier-ejection';
import type { RetryBudgetOptions } from './retry-budget';
import type { StrategySpec } from './strategies';
import type { Transport } from './transport';
import type { TlsOptions } from './tls';

export const DEFAULTS = {
  /** Deadline of a call that names none and inherits none. */
  timeoutMs: 10_000,
  strategy: 'round-robin' as StrategySpec,
  /** Attempts per call, the first included. */
  maxAttempts: 3,
  /** Pause before a retry (jittered, grows per attempt); the retry goes to another instance when there is one. */
  retryBackoff: { initialMs: 5, maxMs: 200, multiplier: 2 } as BackoffOptions,
  retryBudget: { ratio: 0.2, capacity: 20 } as Required<RetryBudgetOptions>,
  outlierEjection: { consecutiveFailures: 5, baseEjectionMs: 1_000, maxEjectionMs: 30_000 },
  /** Longest a removed instance's transport stays open for the calls still in flight on it. */
  removedCloseAfterMs: 30_000,
};

export interface ClientOptions {
  /** How the instance is picked per call: a strategy name, class or instance (default round robin). */
  strategy?: StrategySpec;
  /** Default deadline of a call, from when it is made (ms above 0; Infinity: no deadline). */
  timeoutMs?: number;
  /** Attempts per call, the first included (a whole number, 1 or more). */
  maxAttempts?: number;
  /** Each field a finite number, 0 or more; fields left out keep their defaults. */
  retryBackoff?: Partial<BackoffOptions>;
  /** Each field a finite number, 0 or more. */
  retryBudget?: RetryBudgetOptions;
  /** `consecutiveFailures` a whole number, 1 or more; the times finite, 0 or more. */
  outlierEjection?: Omit<OutlierEjectionOptions, 'clock'>;
  /** Client middleware, outermost first (the transaction context rides on this). */
  middleware?: ClientMiddleware[];
  /** The caller's zone, for the zone-preference strategy. */
  zone?: string;
  /** The transport for an instance (default: unary; e.g. the multiplexed one when `metadata.mux === '1'`). */
  transportFactory?: (instance: ServiceInstance) => Transport;
  /** TLS to the instances (default plaintext); ignored by a `transportFactory` of your own. */
  tls?: TlsOptions;
  /**
   * Connect to and call at most this many of the service's instances (a whole number, 1 or more; default: all),
   * chosen by rendezvous hashing of `subsetKey` with the instance ids — the caller's `zone` first — so many
   * clients of a large service spread evenly and an instance joining or leaving moves few of them (`subset.ts`).
   */
  subsetSize?: number;
  /** What the subset is chosen by (default: random per client); clients with the same key share a subset. */
  subsetKey?: string;
}

/** The numbers a client runs on: the options over the defaults, checked. */
export interface CompiledClientOptions {
  timeoutMs: number;
  maxAttempts: number;
  retryBackoff: BackoffOptions;
  retryBudget: Required<RetryBudgetOptions>;
  outlierEjection: Required<Omit<OutlierEjectionOptions, 'clock'>>;
  /** Infinity: every instance. */
  subsetSize: number;
}

/**
 * The options over the defaults (an option given as `undefined` keeps its default), each number checked:
 * InvalidArgumentError naming the client's service, the option and the value given.
 */
export function compileClientOptions(service: string, options: ClientOptions = {}): CompiledClientOptions {
  const o = withoutUndefined(options);
  const c: CompiledClientOptions = {
    timeoutMs: o.timeoutMs ?? DEFAULTS.timeoutMs,
    maxAttempts: o.maxAttempts ?? DEFAULTS.maxAttempts,
    retryBackoff: { ...DEFAULTS.retryBackoff, ...withoutUndefined(o.retryBackoff ?? {}) },
    retryBudget: { ...DEFAULTS.retryBudget, ...withoutUndefined(o.retryBudget ?? {}) },
    outlierEjection: { ...DEFAULTS.outlierEjection, ...withoutUndefined(o.outlierEjection ?? {}) },
    subsetSize: o.subsetSize ?? Infinity,
  };
  const check = (name: string, value: unknown, ok: (v: number) => boolean, rule: string): void => {
    if (typeof value === 'number' && ok(value)) return;
    throw new InvalidArgumentError(`client of ${service}: ${name} must be ${rule}, got ${String(value)}`, {
      details: { service, option: name },
    });
  };
  const finite = (v: number) => Number.isFinite(v) && v >= 0;
  const whole = (v: number) => Number.isSafeInteger(v) && v >= 1;
  // Infinity is a deadline a call may have (`deadline: Infinity`); NaN, 0 or less would be none or an expired one.
  check('timeoutMs', c.timeoutMs, (v) => v > 0, 'a number of ms above 0 (Infinity: no deadline)');
  check('maxAttempts', c.maxAttempts, whole, 'a whole number, 1 or more (the first attempt included)');
  for (const k of ['initialMs', 'maxMs', 'multiplier'] as const)
    check(`retryBackoff.${k}`, c.retryBackoff[k], finite, 'a finite number, 0 or more');
  for (const k of ['ratio', 'capacity'] as const)
    check(`retryBudget.${k}`, c.retryBudget[k], finite, 'a finite number, 0 or more');
  check(
    'outlierEjection.consecutiveFailures',
    c.outlierEjection.consecutiveFailures,
    whole,
    'a whole number, 1 or more',
  );
  for (const k of ['baseEjectionMs', 'maxEjectionMs'] as const)
    check(`outlierEjection.${k}`, c.outlierEjection[k], finite, 'a finite number of ms, 0 or more');
  check('subsetSize', c.subsetSize, (v) => whole(v) || v === Infinity, 'a whole number, 1 or more');
  if (o.subsetKey !== undefined && (typeof o.subsetKey !== 'string' || o.subsetKey === '')) {
    throw new InvalidArgumentError(
      `client of ${service}: subsetKey must be a non-empty string, got ${JSON.stringify(o.subsetKey)}`,
      { details: { service, option: 'subsetKey' } },
    );
  }
  return c;
}
