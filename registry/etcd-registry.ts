/**
 * The etcd-backed `Registry`: registrations on leases kept alive (re-registered by themselves after a loss),
 * discovery by prefix read + watch from the next revision into a local cache, change events for subscribers.
 * Every background failure is logged and retried, never thrown; `close()` deregisters (revoking leases),
 * cancels every watch and timer, and closes the etcd client it created, so a process (or mocha) exits by itself.
 *
 * ```ts
 * const registry = new EtcdRegistry({ hosts: 'http://127.0.0.1:2379' });
 * const reg = await registry.register({ service: 'inventory', address: '10.0.0.5:7001' });
 * reg.on('lost', (err) => …).on('reregistered', () => …);
 * const live = await registry.instances('inventory'); // then registry.cached('inventory'), no round trip
 * const unsubscribe = registry.watch('inventory', (e) => console.log(e.type, e.instance.address));
 * await registry.close();
 * ```
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { Etcd3, type IKeyValue, type IOptions } from 'etcd3';
import {
  backoffMs,
  FailedPreconditionError,
  logger,
  systemClock,
  UnavailableError,
  type BackoffOptions,
  type Clock,
} from '../common';
import {
  etcdCallDeadline,
  etcdChannelOptions,
  etcdFaultHandling,
  ETCD_CHANNEL_DEFAULTS,
  type EtcdSecurity,
} from './etcd-channel';
import { readPrefix, type PageLimit } from './etcd-range';
import { EtcdRegistration } from './etcd-registration';
import { EtcdServiceWatch } from './etcd-service-watch';
import { instanceKey, normalizePrefix, parseInstanceKey, servicePrefix, servicesPrefix } from './keys';
import type { ChangeListener } from './service-view';
import type { InstanceSpec, Registration, Registry, ServiceInstance } from './types';
import { validateServiceName, validateSpec, ValueDecoder } from './validate';

export interface EtcdRegistryOptions {
  /**
   * etcd endpoints, `http://host:port`. Default: `$ETCD_ENDPOINTS` (comma-separated) when set, else
   * `DEFAULTS.hosts`. Ignored when `client` is given.
   */
  hosts?: string | string[];
  /** Root of every registry key: instances live at `<prefix>/services/<service>/<instanceId>`. */
  prefix?: string;
  /** TTL of each registration's lease: how long a crashed instance stays visible at most. At least 1. */
  leaseTtlSeconds?: number;
  /** Deadline of each unary etcd call (reads, grants, puts, revokes); streams have none. */
  callTimeoutMs?: number;
  /**
   * Keys per page when a service (or every service) is read whole: one response stays far below 4 MiB. A page
   * that still passes it (large values) is read again with half the keys, and later reads start there.
   */
  readPageKeys?: number;
  /** Backoff between attempts of the background loops (re-registration, re-reads) and of reconnects. */
  retryBackoff?: BackoffOptions;
  /**
   * HTTP/2 keepalive of the etcd connection (a ping this often while a watch or lease keepalive is open; the
   * connection breaks when one goes unanswered for `keepaliveTimeoutMs`): a connection gone silent without a
   * reset would otherwise leave every watch quiet and every lease unrenewed, unnoticed. Created clients only.
   */
  keepaliveMs?: number;
  keepaliveTimeoutMs?: number;
  /** An etcd client to use instead of creating one; it is NOT closed by `close()`. */
  client?: Etcd3;
  /** TLS of a created client (PEM contents; endpoints `https://…`): etcd3's `credentials`. */
  credentials?: EtcdSecurity['credentials'];
  /** etcd user of a created client: etcd3's `auth`. */
  auth?: EtcdSecurity['auth'];
  /** Timers of the retry loops and the source of `startedAt`. */
  clock?: Clock;
}

/** The defaults filled in for every option left out (see `EtcdRegistryOptions` for what each one does). */
export const DEFAULTS = Object.freeze({
  /** etcd's own default endpoint; `$ETCD_ENDPOINTS` wins over it when set. */
  hosts: ['http://127.0.0.1:2379'] as readonly string[],
  /** Keys live at `/dmtp/services/<service>/<instanceId>`. */
  prefix: '/dmtp',
  /** A crashed instance stays visible at most this long (DESIGN.md: 10 s). */
  leaseTtlSeconds: 10,
  /** Deadline of one unary etcd call. */
  callTimeoutMs: 5_000,
  /** ~300 KB per page at ~300 bytes per registration. */
  readPageKeys: 1_000,
  /** Re-registration and re-read attempts: 100 ms doubling to 2 s, jittered. */
  retryBackoff: Object.freeze({ initialMs: 100, maxMs: 2_000, multiplier: 2 }) as Readonly<BackoffOptions>,
  /** A ping every 20 s while streams are open; unanswered for 10 s, the connection is dead. */
  keepaliveMs: ETCD_CHANNEL_DEFAULTS.keepaliveMs,
  keepaliveTimeoutMs: ETCD_CHANNEL_DEFAULTS.keepaliveTimeoutMs,
});

/** Options with the defaults filled in: what the registry runs with (logged at start). */
export interface EtcdRegistryConfig {
  hosts: string[];
  prefix: string;
  leaseTtlSeconds: number;
  callTimeoutMs: number;
  readPageKeys: number;
  retryBackoff: BackoffOptions;
  keepaliveMs: number;
  keepaliveTimeoutMs: number;
}

export function compileOptions(options: EtcdRegistryOptions = {}): EtcdRegistryConfig {
  const envHosts = process.env.ETCD_ENDPOINTS?.split(',').filter(Boolean);
  const hosts = options.hosts ?? (envHosts?.length ? envHosts : [...DEFAULTS.hosts]);
  const leaseTtlSeconds = options.leaseTtlSeconds ?? DEFAULTS.leaseTtlSeconds;
  if (!Number.isInteger(leaseTtlSeconds) || leaseTtlSeconds < 1) {
    throw new RangeError(`leaseTtlSeconds must be an integer >= 1, got ${leaseTtlSeconds}`);
  }
  const readPageKeys = options.readPageKeys ?? DEFAULTS.readPageKeys;
  if (!Number.isInteger(readPageKeys) || readPageKeys < 1) {
    throw new RangeError(`readPageKeys must be an integer >= 1, got ${readPageKeys}`);
  }
  return {
    hosts: typeof hosts === 'string' ? hosts.split(',') : [...hosts],
    prefix: normalizePrefix(options.prefix ?? DEFAULTS.prefix),
    leaseTtlSeconds,
    callTimeoutMs: options.callTimeoutMs ?? DEFAULTS.callTimeoutMs,
    readPageKeys,
    retryBackoff: { ...(options.retryBackoff ?? DEFAULTS.retryBackoff) },
    keepaliveMs: options.keepaliveMs ?? DEFAULTS.keepaliveMs,
    keepaliveTimeoutMs: options.keepaliveTimeoutMs ?? DEFAULTS.keepaliveTimeoutMs,
  };
}

/** etcd3's watch-reconnect backoff, bounded by ours (its default grows to 30 s, keeping a closed process up). */
class WatchBackoff {
  constructor(
    private readonly o: BackoffOptions,
    private readonly attempt = 1,
  ) {}
  get duration(): number {
    return backoffMs(this.attempt, this.o);
  }
  next(): WatchBackoff {
    return new WatchBackoff(this.o, this.attempt + 1);
  }
}

function createClient(config: EtcdRegistryConfig, security: EtcdSecurity): Etcd3 {
  const faultHandling = {
    ...etcdFaultHandling(),
    watchBackoff: new WatchBackoff(config.retryBackoff),
  } as IOptions['faultHandling'];
  return new Etcd3({
    hosts: config.hosts,
    dialTimeout: config.callTimeoutMs,
    defaultCallOptions: etcdCallDeadline(config.callTimeoutMs),
    grpcOptions: etcdChannelOptions({
      keepaliveMs: config.keepaliveMs,
      keepaliveTimeoutMs: config.keepaliveTimeoutMs,
      reconnectBackoff: config.retryBackoff,
    }),
    faultHandling,
    credentials: security.credentials,
    auth: security.auth,
  });
}

export class EtcdRegistry implements Registry {
  readonly config: EtcdRegistryConfig;
  /** The etcd client (own or given). */
  readonly client: Etcd3;
  private readonly ownsClient: boolean;
  private readonly clock: Clock;
  private readonly log = logger('registry:etcd');
  private readonly decoder = new ValueDecoder(this.log);
  private readonly registrations = new Set<EtcdRegistration>();
  private readonly watches = new Map<string, EtcdServiceWatch>();
  /** Page size of `services()`, lowered when a page of large values had to be halved. */
  private readonly servicesPage: PageLimit;
  private closing?: Promise<void>;

  constructor(options: EtcdRegistryOptions = {}) {
    this.config = compileOptions(options);
    this.clock = options.clock ?? systemClock;
    this.ownsClient = !options.client;
    this.client =
      options.client ?? createClient(this.config, { credentials: options.credentials, auth: options.auth });
    this.servicesPage = { keys: this.config.readPageKeys };
    this.log.info('etcd registry started', { ...this.config, ownClient: this.ownsClient });
  }

  async register(spec: InstanceSpec): Promise<Registration> {
    this.assertOpen();
    const instanceId = spec?.instanceId ?? `${hostname()}-${process.pid}-${randomBytes(4).toString('hex')}`;
    const instance = validateSpec({ ...spec, instanceId }, this.clock.now());
    const ids = { service: instance.service, instanceId: instance.instanceId };
    for (const r of this.registrations) {
      if (r.instance.service === ids.service && r.instance.instanceId === ids.instanceId) {
        throw new FailedPreconditionError(`'${ids.service}/${ids.instanceId}' is already registered`, {
          details: ids,
        });
      }
    }
    const reg = new EtcdRegistration(instance, {
      client: this.client,
      key: instanceKey(this.config.prefix, instance.service, instance.instanceId),
      leaseTtlSeconds: this.config.leaseTtlSeconds,
      backoff: this.config.retryBackoff,
      clock: this.clock,
      log: this.log,
      onClosed: (r) => this.registrations.delete(r),
    });
    this.registrations.add(reg);
    try {
      await reg.start();
    } catch (err) {
      await reg.deregister();
      throw new UnavailableError(`could not register '${ids.service}/${ids.instanceId}' in etcd`, {
        cause: err,
        details: ids,
      });
    }
    return reg;
  }

  async instances(service: string): Promise<ServiceInstance[]> {
    const w = this.watchFor(service);
    await w.whenReady();
    return w.view.snapshot();
  }

  cached(service: string): ServiceInstance[] {
    const w = this.watches.get(service);
    if (w) return w.view.snapshot();
    validateServiceName(service);
    return [];
  }

  async lookup(service: string, instanceId: string): Promise<ServiceInstance | undefined> {
    const w = this.watches.get(service);
    if (w) {
      await w.whenReady();
      return w.view.snapshot().find((i) => i.instanceId === instanceId);
    }
    this.assertOpen();
    validateServiceName(service);
    const key = instanceKey(this.config.prefix, service, instanceId);
    let kv: IKeyValue | undefined;
    try {
      const res = await this.client.kv.range(
        { key: Buffer.from(key) },
        { deadline: Date.now() + this.config.callTimeoutMs },
      );
      kv = res.kvs[0];
    } catch (err) {
      throw new UnavailableError(`cannot read '${service}/${instanceId}' in etcd`, {
        cause: err,
        details: { service, instanceId },
      });
    }
    return kv ? this.decoder.decode(key, service, instanceId, kv.value.toString()) : undefined;
  }

  watch(service: string, listener: ChangeListener): () => void {
    return this.watchFor(service).view.subscribe(listener);
  }

  async services(): Promise<string[]> {
    this.assertOpen();
    let kvs: IKeyValue[];
    try {
      ({ kvs } = await readPrefix(this.client, servicesPrefix(this.config.prefix), this.servicesPage));
    } catch (err) {
      throw new UnavailableError('cannot list the services in etcd', { cause: err });
    }
    const names = new Set<string>();
    for (const kv of kvs) {
      const [key, value] = [kv.key.toString(), kv.value.toString()];
      const parsed = parseInstanceKey(this.config.prefix, key);
      if (this.decoder.decode(key, parsed?.service, parsed?.instanceId, value)) names.add(parsed!.service);
    }
    return [...names].sort();
  }

  /** The discovery of one service, started if needed (for diagnostics and tests). */
  serviceWatch(service: string): EtcdServiceWatch | undefined {
    return this.watches.get(service);
  }

  close(): Promise<void> {
    return (this.closing ??= this.shutdown());
  }

  private async shutdown(): Promise<void> {
    // Reverse order of start: leave the registry first (others stop calling us), then stop looking.
    await Promise.all([...this.registrations].map((r) => r.deregister()));
    const watches = [...this.watches.values()];
    this.watches.clear();
    await this.capped(Promise.all(watches.map((w) => w.close())), 'stopping the watches');
    if (this.ownsClient) this.client.close();
    this.log.info('etcd registry closed');
  }

  /** Waits for `p` at most one call timeout: a hung etcd must not hang close(). */
  private async capped(p: Promise<unknown>, what: string): Promise<void> {
    let timer: { cancel(): void } | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = this.clock.setTimeout(() => {
        this.log.warn(`${what} took too long; closing anyway`);
        resolve();
      }, this.config.callTimeoutMs);
    });
    await Promise.race([p.catch(() => undefined), timeout]);
    timer?.cancel();
  }

  private watchFor(service: string): EtcdServiceWatch {
    this.assertOpen();
    let w = this.watches.get(service);
    if (!w) {
      validateServiceName(service);
      w = new EtcdServiceWatch(service, {
        client: this.client,
        keyPrefix: servicePrefix(this.config.prefix, service),
        pageKeys: this.config.readPageKeys,
        decoder: this.decoder,
        backoff: this.config.retryBackoff,
        clock: this.clock,
        log: this.log,
      });
      this.watches.set(service, w.start());
    }
    return w;
  }

  private assertOpen(): void {
    if (this.closing) throw new FailedPreconditionError('the registry is closed');
  }
}
