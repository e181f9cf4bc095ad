/**
 * `{ ...DEFAULTS, ...withoutUndefined(options) }`: an option given as `undefined` keeps its default. A plain
 * spread would let `{ idleCloseMs: undefined }` (an unset environment variable, an optional field passed on)
 * replace the default with `undefined`.
 */
export function withoutUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
