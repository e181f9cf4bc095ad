/** The load-balancing strategies, and `resolveStrategy()` to get one by name, class or instance. */
import { InvalidArgumentError } from '../../common/errors';
import { ConsistentHashStrategy } from './consistent-hash';
import { LeastOutstandingStrategy } from './least-outstanding';
import { RandomStrategy } from './random';
import { RoundRobinStrategy } from './round-robin';
import type { Strategy } from './strategy';
import { WeightedStrategy } from './weighted';
import { ZonePreferenceStrategy } from './zone-preference';

export * from './strategy';
export { RoundRobinStrategy, RandomStrategy, WeightedStrategy, LeastOutstandingStrategy };
export { ConsistentHashStrategy, hash32, type ConsistentHashOptions } from './consistent-hash';
export { ZonePreferenceStrategy, type ZonePreferenceOptions } from './zone-preference';

export const STRATEGIES = {
  'round-robin': RoundRobinStrategy,
  random: RandomStrategy,
  weighted: WeightedStrategy,
  'least-outstanding': LeastOutstandingStrategy,
  'consistent-hash': ConsistentHashStrategy,
  'zone-preference': ZonePreferenceStrategy,
} as const;

export type StrategyName = keyof typeof STRATEGIES;

/** What a client accepts as its strategy: a name, a class with a no-argument constructor, or an instance. */
export type StrategySpec = StrategyName | (new () => Strategy) | Strategy;

/** A fresh strategy (strategies keep per-client state such as round-robin counters). */
export function resolveStrategy(spec: StrategySpec = 'round-robin'): Strategy {
  if (typeof spec === 'string') {
    const Ctor = Object.hasOwn(STRATEGIES, spec) ? STRATEGIES[spec] : undefined;
    if (!Ctor)
      throw new InvalidArgumentError(`unknown strategy '${spec}' (${Object.keys(STRATEGIES).join(', ')})`, {
        details: { strategy: spec },
      });
    return new Ctor();
  }
  if (typeof spec === 'function') return new spec();
  return spec;
}
