/**
 * One AsyncLocalStorage for all of DMTP's implicit context: the incoming call (rpc: deadline inheritance), the
 * transaction (txapi) and the branch (txapi), each a named slot of one frame.
 *
 * Why one: Node propagates every enabled AsyncLocalStorage to every promise and async resource created while it
 * is enabled, one store property per instance. Three instances cost three propagations per promise on every hot
 * path; one instance with slots costs one. Running a slot copies the (small) frame and replaces that slot only,
 * so the other slots stay visible inside it.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

export type SlotName = 'call' | 'tx' | 'branch';

type Frame = Readonly<Partial<Record<SlotName, unknown>>>;

const storage = new AsyncLocalStorage<Frame>();

export interface ContextSlot<T> {
  /** The value of this slot in the current async context (undefined outside any `run`). */
  get(): T | undefined;
  /** Runs `fn` with this slot set to `value` (undefined: without it); the other slots stay as they are. */
  run<R>(value: T | undefined, fn: () => R): R;
}

export function contextSlot<T>(name: SlotName): ContextSlot<T> {
  return {
    get: () => storage.getStore()?.[name] as T | undefined,
    run: (value, fn) => {
      const cur = storage.getStore();
      return storage.run(cur ? { ...cur, [name]: value } : { [name]: value }, fn);
    },
  };
}
