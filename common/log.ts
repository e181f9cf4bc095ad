/**
 * Namespaced, structured logging: `logger('registry').warn('skipping malformed value', { key })` writes one JSON
 * line to stderr. DMTP_LOG_LEVEL (debug|info|warn|error|silent, default warn; info for long-running processes
 * that set it) picks what is written. Tests and libraries stay quiet by default. A line written inside a
 * recorded OpenTelemetry span (tracing on, an SDK registered) names it: `trace_id`, `span_id`.
 */
import { trace } from '@opentelemetry/api';

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

let warnedLevel: string | undefined;

function threshold(): number {
  const raw = process.env.DMTP_LOG_LEVEL ?? 'warn';
  const v = raw.trim().toLowerCase() as Level | 'silent';
  const n = Object.hasOwn(ORDER, v) ? ORDER[v] : undefined;
  if (n !== undefined) return n;
  // Not a level (`verbose`, a typo): warn, and say so once per value — it went quietly to warn before.
  if (warnedLevel !== raw) {
    warnedLevel = raw;
    process.stderr.write(
      `DMTP_LOG_LEVEL '${raw}' is not one of debug, info, warn, error, silent: logging at warn\n`,
    );
  }
  return ORDER.warn;
}

export function logger(namespace: string): Logger {
  const write = (level: Level, msg: string, fields?: Record<string, unknown>) => {
    if (ORDER[level] < threshold()) return;
    const line: Record<string, unknown> = { t: new Date().toISOString(), level, ns: namespace, msg };
    const span = trace.getActiveSpan();
    if (span?.isRecording()) {
      const { traceId, spanId } = span.spanContext();
      line.trace_id = traceId;
      line.span_id = spanId;
    }
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
