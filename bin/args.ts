/**
 * The CLI's own argument parser (no dependency): a command declares its flags and positionals once, and the
 * same declaration parses argv, fills values from the environment and defaults, and renders `--help`.
 *
 * Accepted forms: `--flag value`, `--flag=value`, `-f value`, `--flag` / `--no-flag` for booleans, `--` ends
 * the flags. Anything unknown or malformed is a UsageError naming the command, never a silent default.
 */
import { MAX_TIMER_MS } from '../common/clock';
import { parseYesNo } from '../common/options';

export type FlagType = 'string' | 'boolean' | 'integer' | 'duration';
export type FlagValue = string | boolean | number;

export interface FlagSpec {
  type: FlagType;
  description: string;
  short?: string;
  /** Environment variable read when the flag is not given (before `default`). */
  env?: string;
  default?: FlagValue;
  /** Shown in help: `--etcd <url,...>`. */
  valueName?: string;
  /** A duration that is a wait or a deadline (a timer): at most MAX_TIMER_MS. */
  timer?: boolean;
}

export interface PositionalSpec {
  name: string;
  description: string;
  required?: boolean;
}

export interface CommandSpec {
  /** Full command path as typed: `tx list`. */
  name: string;
  summary: string;
  flags: Record<string, FlagSpec>;
  positionals?: PositionalSpec[];
  /** Extra paragraphs shown in help after the flags. */
  notes?: string[];
  examples?: string[];
}

export interface ParsedArgs {
  flags: Record<string, FlagValue | undefined>;
  positionals: string[];
  help: boolean;
}

/** Wrong arguments: the message is printed as one line with a pointer to `--help`. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
  constructor(
    message: string,
    readonly command = '',
  ) {
    super(message);
  }
}

const UNITS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `250ms`, `30s`, `5m`, `1h30m`, `2d` → milliseconds. A bare number is refused (the unit is not guessable). */
export function parseDuration(text: string): number {
  const s = text.trim();
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let matched = 0;
  for (let m = re.exec(s); m; m = re.exec(s)) {
    total += Number(m[1]) * UNITS[m[2]];
    matched = re.lastIndex;
  }
  if (!s || matched !== s.length) {
    throw new UsageError(`invalid duration '${text}' (use e.g. 500ms, 30s, 5m, 1h, 1h30m)`);
  }
  return Math.round(total);
}

/** Milliseconds → a short human form: `850ms`, `42s`, `5m03s`, `2h05m`, `3d04h`. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return '-';
  const neg = ms < 0 ? '-' : '';
  ms = Math.abs(Math.round(ms));
  if (ms < 1_000) return `${neg}${ms}ms`;
  const s = Math.floor(ms / 1_000);
  const pad = (n: number) => String(n).padStart(2, '0');
  if (s < 60) return `${neg}${s}s`;
  if (s < 3_600) return `${neg}${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86_400) return `${neg}${Math.floor(s / 3_600)}h${pad(Math.floor(s / 60) % 60)}m`;
  return `${neg}${Math.floor(s / 86_400)}d${pad(Math.floor(s / 3_600) % 24)}h`;
}

function convert(spec: FlagSpec, raw: string, where: string, command: string): FlagValue {
  switch (spec.type) {
    case 'string':
      return raw;
    case 'boolean': {
      const yes = raw === '' ? false : parseYesNo(raw);
      if (yes !== undefined) return yes;
      throw new UsageError(`${where} expects true or false, not '${raw}'`, command);
    }
    case 'integer':
      if (!/^\d+$/.test(raw.trim()))
        throw new UsageError(`${where} expects a whole number, not '${raw}'`, command);
      return Number(raw);
    case 'duration': {
      let ms: number;
      try {
        ms = parseDuration(raw);
      } catch (err) {
        throw new UsageError(`${where}: ${(err as Error).message}`, command);
      }
      if (spec.timer && ms > MAX_TIMER_MS)
        throw new UsageError(`${where}: '${raw}' is longer than the longest wait, 24d`, command);
      // A wait of nothing: refused here, in the flag's own words (further in, it was an internal option's
      // message, or — `events tail --timeout 0ms` — no timeout at all).
      if (spec.timer && ms < 1) throw new UsageError(`${where}: must be at least 1ms, not '${raw}'`, command);
      return ms;
    }
  }
}

/** Parses argv (without the command words) against a command's declaration. */
export function parseArgs(
  argv: readonly string[],
  spec: CommandSpec,
  env: NodeJS.ProcessEnv = process.env,
): ParsedArgs {
  const flags: Record<string, FlagValue | undefined> = {};
  const positionals: string[] = [];
  let help = false;
  const byShort = new Map(
    Object.entries(spec.flags)
      .filter(([, f]) => f.short)
      .map(([n, f]) => [f.short!, n]),
  );
  const fail = (msg: string): never => {
    throw new UsageError(msg, spec.name);
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (arg === '--help' || arg === '-h') {
      help = true;
      continue;
    }
    if (!arg.startsWith('-') || arg === '-') {
      positionals.push(arg);
      continue;
    }
    let name: string;
    let inline: string | undefined;
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      name = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
      inline = eq === -1 ? undefined : arg.slice(eq + 1);
    } else {
      if (arg.length !== 2) fail(`unknown option '${arg}'`);
      name = byShort.get(arg.slice(1)) ?? fail(`unknown option '${arg}'`);
    }
    let f = spec.flags[name];
    if (
      !f &&
      name.startsWith('no-') &&
      spec.flags[name.slice(3)]?.type === 'boolean' &&
      inline === undefined
    ) {
      flags[name.slice(3)] = false;
      continue;
    }
    if (!f) fail(`unknown option '--${name}'`);
    f = f!;
    if (f.type === 'boolean') {
      flags[name] = inline === undefined ? true : convert(f, inline, `--${name}`, spec.name);
      continue;
    }
    let raw = inline;
    if (raw === undefined) {
      if (i + 1 >= argv.length || (argv[i + 1].startsWith('--') && argv[i + 1].length > 2))
        fail(`option '--${name}' needs a value`);
      raw = argv[++i];
    }
    flags[name] = convert(f, raw!, `--${name}`, spec.name);
  }
  for (const [name, f] of Object.entries(spec.flags)) {
    if (flags[name] !== undefined) continue;
    const fromEnv = f.env ? env[f.env] : undefined;
    if (fromEnv !== undefined && fromEnv !== '') flags[name] = convert(f, fromEnv, f.env!, spec.name);
    else flags[name] = f.default;
  }
  if (!help) {
    const declared = spec.positionals ?? [];
    const missing = declared.find((p, i) => p.required && positionals[i] === undefined);
    if (missing) fail(`missing <${missing.name}>`);
    if (positionals.length > declared.length) fail(`unexpected argument '${positionals[declared.length]}'`);
  }
  return { flags, positionals, help };
}

const shown = (f: FlagSpec) =>
  f.type === 'duration' && typeof f.default === 'number' ? formatDuration(f.default) : String(f.default);

/** The `--help` text of one command. */
export function helpText(spec: CommandSpec): string {
  const pos = (spec.positionals ?? []).map((p) => (p.required ? `<${p.name}>` : `[${p.name}]`));
  const lines = [`Usage: dmtp ${spec.name} ${[...pos, '[options]'].join(' ')}`, '', spec.summary];
  if (spec.positionals?.length) {
    lines.push('', 'Arguments:');
    for (const p of spec.positionals) lines.push(`  ${p.name.padEnd(24)}${p.description}`);
  }
  lines.push('', 'Options:');
  const entries: [string, string][] = Object.entries(spec.flags).map(([name, f]) => {
    const short = f.short ? `-${f.short}, ` : '';
    const value = f.type === 'boolean' ? '' : ` <${f.valueName ?? f.type}>`;
    const extra = [
      f.env ? `env ${f.env}` : '',
      f.default !== undefined && f.default !== false ? `default ${shown(f)}` : '',
    ]
      .filter(Boolean)
      .join(', ');
    return [`${short}--${name}${value}`, f.description + (extra ? ` (${extra})` : '')];
  });
  entries.push(['-h, --help', 'show this help']);
  const width = Math.max(...entries.map(([l]) => l.length)) + 2;
  for (const [l, d] of entries) lines.push(`  ${l.padEnd(width)}${d}`);
  for (const n of spec.notes ?? []) lines.push('', n);
  if (spec.examples?.length) {
    lines.push('', 'Examples:');
    for (const e of spec.examples) lines.push(`  ${e}`);
  }
  return lines.join('\n') + '\n';
}
