/**
 * The incoming call a handler is serving, in AsyncLocalStorage: a nested client call made while serving it
 * inherits its deadline (the remaining time) and cancellation. Bound by the first server middleware, so it holds
 * on the unary and the multiplexed path alike.
 */
import { contextSlot } from '../common';
import type { IncomingCall, ServerMiddleware } from './middleware';

const storage = contextSlot<IncomingCall>('call');

/** The call being served by the current async context, if any. */
export function currentCall(): IncomingCall | undefined {
  return storage.get();
}

/** The deadline a nested call inherits (Infinity outside a handler). */
export function inheritedDeadline(): number {
  return storage.get()?.deadline ?? Infinity;
}

/**
 * The signal a nested call inherits combined with its own: the served call's cancellation (its caller gave up,
 * or its deadline passed) cancels the calls it made onward.
 */
export function inheritedSignal(own?: AbortSignal): AbortSignal | undefined {
  const served = storage.get()?.signal;
  if (!served) return own;
  return own ? AbortSignal.any([own, served]) : served;
}

/** Server middleware that makes `currentCall()` work inside the handler and the middleware after it. */
export const bindCallContext: ServerMiddleware = (call, next) => storage.run(call, next);
