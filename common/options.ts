import { InvalidArgumentError } from './errors';

/**
 * `{ ...DEFAULTS, ...withoutUndefined(options) }`: an option given as `undefined` keeps its default. A plain
 * spread would let `{ idleCloseMs: undefined }` (an unset environment variable, an optional field passed on)
 * replace the default with `undefined`.
 */
/** Refuses a setting that is not a whole number in min..max: `<owner>: <name> must be a whole number in …`. */
export function checkWholeNumber(owner: string, name: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(
      `${owner}: ${name} must be a whole number in ${min}-${max}, got ${value}`,
      {
        details: { option: name },
      },
    );
  }
}

export function withoutUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
