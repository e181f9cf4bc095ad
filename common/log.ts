/**
 * Namespaced, structured logging: `logger('registry').warn('skipping malformed value', { key })` writes one JSON
 * line to stderr. DMTP_LOG_LEVEL (debug|info|warn|error|silent, default warn; info for long-running processes
 * that set it) picks what is written. Tests and libraries stay quiet by default.
 */
export type Level = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<Level | 'silent', number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 };

export interface Logger {
  readonly namespace: string;
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(sub: string): Logger;
}

function threshold(): number {
  const v = (process.env.DMTP_LOG_LEVEL ?? 'warn') as Level | 'silent';
  return ORDER[v] ?? ORDER.warn;
}

export function logger(namespace: string): Logger {
  const write = (level: Level, msg: string, fields?: Record<string, unknown>) => {
    if (ORDER[level] < threshold()) return;
    const line: Record<string, unknown> = { t: new Date().toISOString(), level, ns: namespace, msg };
    if (fields) {
      for (const [k, v] of Object.entries(fields))
        line[k] = v instanceof Error ? `${v.name}: ${v.message}` : v;
    }
    process.stderr.write(serialise(line) + '\n');
  };
  return {
    namespace,
    debug: (m, f) => write('debug', m, f),
    info: (m, f) => write('info', m, f),
    warn: (m, f) => write('warn', m, f),
    error: (m, f) => write('error', m, f),
    child: (sub) => logger(`${namespace}:${sub}`),
  };
}

/**
 * The line as JSON, whatever the fields hold: logging never throws. A field JSON cannot take (a BigInt, a
 * cycle, an object without prototype whose toJSON throws…) is written as a short description instead.
 */
function serialise(line: Record<string, unknown>): string {
  try {
    return JSON.stringify(line);
  } catch {
    const safe: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(line)) {
      try {
        JSON.stringify(v);
        safe[k] = v;
      } catch {
        safe[k] = describeValue(v);
      }
    }
    return JSON.stringify(safe);
  }
}

/** A description of any value that never throws (String() does for an object without prototype). */
export function describeValue(v: unknown): string {
  try {
    return typeof v === 'bigint' ? `${v}n` : String(v);
  } catch {
    return Object.prototype.toString.call(v);
  }
}
