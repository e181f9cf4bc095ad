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

/**
 * A yes/no setting as DMTP reads one everywhere (CLI flags, the coordinator's environment): 1/true/yes/on or
 * 0/false/no/off, any case; undefined for anything else (the caller refuses it, naming the setting).
 */
export function parseYesNo(raw: string): boolean | undefined {
  if (/^(1|true|yes|on)$/i.test(raw.trim())) return true;
  if (/^(0|false|no|off)$/i.test(raw.trim())) return false;
  return undefined;
}
