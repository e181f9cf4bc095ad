/**
 * Subscription filters, applied before the handler: events that do not match are skipped (their offsets are
 * committed like handled ones). A filter is either header equality (every named header must equal the value,
 * or one of the values given as an array) or a predicate over the received event.
 */
import { InvalidArgumentError } from '../common';
import type { ReceivedEvent } from './received-event';

export type EventFilter =
  { headers: Record<string, string | readonly string[]> } | ((event: ReceivedEvent) => boolean);

/** Compiles a filter to one function (undefined: everything matches). */
export function compileFilter(filter: EventFilter | undefined): ((e: ReceivedEvent) => boolean) | undefined {
  if (filter === undefined) return undefined;
  if (typeof filter === 'function') return filter;
  const headers = (filter as { headers?: unknown } | null)?.headers;
  if (headers === null || typeof headers !== 'object') {
    throw new InvalidArgumentError('subscribe: filter must be a function or { headers: { name: value(s) } }');
  }
  const wanted = Object.entries(headers as Record<string, unknown>).map(([name, v]) => {
    const values = typeof v === 'string' ? [v] : Array.isArray(v) ? v : undefined;
    if (!values || !values.every((x) => typeof x === 'string')) {
      throw new InvalidArgumentError(
        `subscribe: filter header '${name}' must be a string or an array of strings`,
      );
    }
    return [name, values as string[]] as const;
  });
  return (e) => {
    for (const [name, values] of wanted) {
      const got = e.header(name);
      if (got === undefined || !values.includes(got)) return false;
    }
    return true;
  };
}
