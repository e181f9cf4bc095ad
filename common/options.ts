import { readFileSync } from 'node:fs';
import { InvalidArgumentError } from './errors';

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

/** Refuses a setting given but not a boolean: `<owner>: <name> must be true or false, got …`. */
export function checkOptionalBoolean(owner: string, name: string, value: unknown): void {
  if (value !== undefined && typeof value !== 'boolean')
    throw new InvalidArgumentError(`${owner}: ${name} must be true or false, got ${String(value)}`, {
      details: { option: name },
    });
}

/**
 * `{ ...DEFAULTS, ...withoutUndefined(options) }`: an option given as `undefined` keeps its default. A plain
 * spread would let `{ idleCloseMs: undefined }` (an unset environment variable, an optional field passed on)
 * replace the default with `undefined`.
 */
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

/**
 * The file at `path`, given as setting `option` (a PEM certificate, a key), or undefined without a path.
 * InvalidArgumentError naming the setting and the path when it cannot be read.
 */
export function readFileOption(option: string, path: string | undefined): Buffer | undefined {
  if (!path) return undefined;
  try {
    return readFileSync(path);
  } catch (err) {
    throw new InvalidArgumentError(`${option}: cannot read ${path}: ${(err as Error).message}`, {
      details: { option, path },
    });
  }
}

/** The file at the path environment variable `name` holds, or undefined when it is unset or empty (readFileOption). */
export function readFileFromEnv(env: NodeJS.ProcessEnv, name: string): Buffer | undefined {
  return readFileOption(name, env[name]);
}

/** Two settings given together or not at all (a certificate and its key): InvalidArgumentError naming the missing one. */
export function checkTogether(names: readonly [string, string], values: readonly [unknown, unknown]): void {
  if ((values[0] === undefined) === (values[1] === undefined)) return;
  throw new InvalidArgumentError(`${names[0]} and ${names[1]} go together (one is missing)`, {
    details: { option: values[0] === undefined ? names[0] : names[1] },
  });
}

/** An on/off environment variable: unset or empty is off; anything parseYesNo does not know names the variable. */
export function flagFromEnv(env: NodeJS.ProcessEnv, name: string): boolean {
  const raw = env[name] ?? '';
  if (raw.trim() === '') return false;
  const yes = parseYesNo(raw);
  if (yes === undefined) {
    throw new InvalidArgumentError(`${name} must be 1/true/yes/on or 0/false/no/off, not '${raw}'`, {
      details: { option: name },
    });
  }
  return yes;
}
