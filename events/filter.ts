/**
 * Subscription filters, applied before the handler: events that do not match are skipped (their offsets are
 * committed like handled ones). A filter is either header equality (every named header must equal the value,
 * or one of the values given as an array) or a predicate over the received event.
 */
import type { ReceivedEvent } from './received-event';

export type EventFilter =
  { headers: Record<string, string | readonly string[]> } | ((event: ReceivedEvent) => boolean);

/** Compiles a filter to one function (undefined: everything matches). */
export function compileFilter(filter: EventFilter | undefined): ((e: ReceivedEvent) => boolean) | undefined {
  if (filter === undefined) return undefined;
  if (typeof filter === 'function') return filter;
  const wanted = Object.entries(filter.headers).map(
    ([name, v]) => [name, typeof v === 'string' ? [v] : [...v]] as const,
  );
  return (e) => {
    for (const [name, values] of wanted) {
      const got = e.header(name);
      if (got === undefined || !values.includes(got)) return false;
    }
    return true;
  };
}
