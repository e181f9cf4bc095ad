/**
 * One-shot reads of the registry for the CLI. The CLI does not use EtcdRegistry's watch-backed discovery
 * (built to wait out an etcd outage, not to report it): it reads the keys once, through the registry's own key
 * layout and decoder, with one deadline, and turns every failure into "cannot reach etcd at …".
 */
import { Etcd3 } from 'etcd3';
import {
  decodeInstance,
  parseInstanceKey,
  servicePrefix,
  servicesPrefix,
  type ServiceInstance,
  readPrefix,
  etcdCallDeadline,
  etcdFaultHandling,
} from '../registry';
import { etcdError } from './errors';
import { envEtcdSecurity } from './tls';

export interface EtcdTarget {
  endpoints: string[];
  prefix: string;
  timeoutMs: number;
}

/** Runs `fn` with a fresh etcd client, closed afterwards; any failure or the deadline becomes a CliError. */
export async function withEtcd<T>(t: EtcdTarget, fn: (client: Etcd3) => Promise<T>): Promise<T> {
  const client = new Etcd3({
    hosts: t.endpoints,
    dialTimeout: t.timeoutMs,
    defaultCallOptions: etcdCallDeadline(t.timeoutMs),
    faultHandling: etcdFaultHandling(),
    ...envEtcdSecurity(),
  });
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${t.timeoutMs} ms`)), t.timeoutMs);
  });
  try {
    return await Promise.race([fn(client), deadline]);
  } catch (err) {
    throw etcdError(err, t.endpoints);
  } finally {
    clearTimeout(timer);
    client.close();
  }
}

/** Live instances under the prefix (of one service, or of all), sorted by service then instance id. */
export async function readInstances(t: EtcdTarget, service?: string): Promise<ServiceInstance[]> {
  const root = service ? servicePrefix(t.prefix, service) : servicesPrefix(t.prefix);
  const { kvs } = await withEtcd(t, (c) => readPrefix(c, root));
  const out: ServiceInstance[] = [];
  for (const kv of kvs) {
    const [key, value] = [kv.key.toString(), kv.value.toString()];
    const ids = parseInstanceKey(t.prefix, key);
    if (!ids) continue;
    try {
      out.push(decodeInstance(ids.service, ids.instanceId, value));
    } catch {
      // A foreign or malformed value under the prefix is not an instance; the registry skips it too.
    }
  }
  return out.sort((a, b) =>
    a.service === b.service ? a.instanceId.localeCompare(b.instanceId) : a.service.localeCompare(b.service),
  );
}
