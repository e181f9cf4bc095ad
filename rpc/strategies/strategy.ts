/**
 * The one interface every load-balancing strategy implements (moleculer style): given the providers the client
 * may use for this call, pick one. Strategies are small, synchronous and allocation-light: they run on every call.
 */
import type { ServiceInstance } from '../../registry/types';

/** A candidate instance as a strategy sees it. */
export interface Provider {
  readonly instance: ServiceInstance;
  /** Calls this client has in flight to the instance (both transports), for least-outstanding. */
  readonly inFlight: number;
}

/** What a strategy may know about the call being placed. */
export interface SelectContext {
  /** Full method path. */
  method: string;
  /** Per-call key for consistent hashing (e.g. an order id). */
  key?: string;
  /** The caller's zone, for zone preference. */
  zone?: string;
}

export interface Strategy {
  /** Picks one of `providers` (never empty when called), or undefined when none may take the call. */
  select<P extends Provider>(providers: readonly P[], ctx: SelectContext): P | undefined;
}

/** A random integer in [0, n). */
export type RandomInt = (n: number) => number;
export const randomInt: RandomInt = (n) => Math.floor(Math.random() * n);
