/** `{ ...DEFAULTS, ...withoutUndefined(options) }`: an option given as `undefined` keeps its default. */
export function withoutUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
