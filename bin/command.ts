/**
 * What every command is made of: its declaration (flags, arguments, help) and a run function that gets the
 * parsed arguments and somewhere to write. Also the flags shared by several commands, declared once.
 */
import type { CommandSpec, FlagSpec, ParsedArgs } from './args';

export interface Io {
  out(text: string): void;
  err(text: string): void;
}

export interface RunContext {
  args: ParsedArgs;
  io: Io;
  env: NodeJS.ProcessEnv;
}

export interface Command {
  spec: CommandSpec;
  /** Resolves to the exit code (0 when undefined). Throws for failures; cli.ts prints them as one line. */
  run(ctx: RunContext): Promise<number | void>;
}

export const DEFAULT_ETCD = 'http://127.0.0.1:23790';
export const DEFAULT_PREFIX = '/dmtp';
export const DEFAULT_KAFKA = '127.0.0.1:19092';
/** Registry name the coordinators register under (txapi's `DMTP_DEFAULTS.coordinatorService`). */
export const COORDINATOR_SERVICE = 'dmtp-coordinator';

export const JSON_FLAG: Record<string, FlagSpec> = {
  json: { type: 'boolean', description: 'print JSON for scripts instead of a table' },
};

export const ETCD_FLAGS: Record<string, FlagSpec> = {
  etcd: {
    type: 'string',
    description: 'etcd endpoints, comma-separated',
    env: 'ETCD_ENDPOINTS',
    default: DEFAULT_ETCD,
    valueName: 'url,...',
  },
  prefix: {
    type: 'string',
    description: 'key prefix of the registry (and of the coordinator log)',
    env: 'DMTP_PREFIX',
    default: DEFAULT_PREFIX,
    valueName: 'path',
  },
};

export const TIMEOUT_FLAG: Record<string, FlagSpec> = {
  timeout: {
    type: 'duration',
    timer: true,
    description: 'deadline of each call to etcd or the coordinator',
    default: 5_000,
  },
};

export const COORDINATOR_FLAGS: Record<string, FlagSpec> = {
  coordinator: {
    type: 'string',
    description: `coordinator address; without it, the coordinators registered as '${COORDINATOR_SERVICE}'`,
    env: 'DMTP_COORDINATOR',
    valueName: 'host:port',
  },
  ...ETCD_FLAGS,
  ...TIMEOUT_FLAG,
};

export function endpointsOf(args: ParsedArgs): string[] {
  return String(args.flags.etcd)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

/** Where the registry is, from ETCD_FLAGS and TIMEOUT_FLAG. */
export function etcdOf(args: ParsedArgs): { endpoints: string[]; prefix: string; timeoutMs: number } {
  return {
    endpoints: endpointsOf(args),
    prefix: String(args.flags.prefix),
    timeoutMs: Number(args.flags.timeout),
  };
}

export function writeJson(io: Io, value: unknown): void {
  io.out(JSON.stringify(value, null, 2) + '\n');
}
