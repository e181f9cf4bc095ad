/**
 * The registry's key layout in etcd: `<prefix>/services/<service>/<instanceId>`. Kept in one place so the
 * writer (registration), the readers (discovery, `services()`) and the tests agree on it.
 */

/** Normalises a user prefix: no trailing '/', so joins never produce '//' ('' stays the root). */
export function normalizePrefix(prefix: string): string {
  return prefix.replace(/\/+$/, '');
}

/** `<prefix>/services/`: everything the registry owns lives below this. */
export function servicesPrefix(prefix: string): string {
  return `${normalizePrefix(prefix)}/services/`;
}

/** `<prefix>/services/<service>/`: the range one service's discovery reads and watches. */
export function servicePrefix(prefix: string, service: string): string {
  return `${servicesPrefix(prefix)}${service}/`;
}

/** `<prefix>/services/<service>/<instanceId>`: one instance's key. */
export function instanceKey(prefix: string, service: string, instanceId: string): string {
  return `${servicePrefix(prefix, service)}${instanceId}`;
}

/**
 * Splits a key found under `servicesPrefix(prefix)` into its service and instance id, or returns undefined
 * when it does not have the `<service>/<instanceId>` shape (a foreign key someone else wrote).
 */
export function parseInstanceKey(
  prefix: string,
  key: string,
): { service: string; instanceId: string } | undefined {
  const root = servicesPrefix(prefix);
  if (!key.startsWith(root)) return undefined;
  const rest = key.slice(root.length);
  const slash = rest.indexOf('/');
  if (slash <= 0 || slash === rest.length - 1 || rest.indexOf('/', slash + 1) !== -1) return undefined;
  return { service: rest.slice(0, slash), instanceId: rest.slice(slash + 1) };
}
