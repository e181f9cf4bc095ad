/**
 * The registry's public shapes: what an instance is, what subscribers are told, and the one `Registry`
 * interface that the etcd implementation and the in-memory one (unit tests only) both implement and that one
 * contract test runs against.
 */
import type { EventEmitter } from 'node:events';

/** What an instance says about itself when it registers. */
export interface InstanceSpec {
  /** Service name, e.g. "inventory": 1-128 chars, no '/', no control characters. */
  service: string;
  /** Unique per instance; default: `<hostname>-<pid>-<random>`. Same rules as `service`. */
  instanceId?: string;
  /** host:port the instance serves on. */
  address: string;
  version?: string;
  zone?: string;
  /** Relative weight for the weighted strategy (default 1; 0 = takes no calls, see `takesCalls`). */
  weight?: number;
  /**
   * Free-form string metadata. Well-known keys: `mux` = "1" when the instance serves the multiplexed call
   * path (rpc fast path); `methods` = comma-separated full method names it serves (optional).
   */
  metadata?: Record<string, string>;
}

/** An instance as stored under `<prefix>/services/<service>/<instanceId>` and seen by subscribers. */
export interface ServiceInstance {
  service: string;
  instanceId: string;
  address: string;
  version: string;
  zone: string;
  weight: number;
  metadata: Record<string, string>;
  /** ms since the Unix epoch. */
  startedAt: number;
}

export type ChangeEvent =
  | { type: 'add'; instance: ServiceInstance }
  | { type: 'update'; instance: ServiceInstance; previous: ServiceInstance }
  | { type: 'remove'; instance: ServiceInstance };

/**
 * A live registration. Emits 'lost' (lease lost: etcd restarted, long pause), then 'reregistered' when it is
 * back under a new lease; 'error' is never emitted for background failures (they are retried and logged).
 */
export interface Registration extends EventEmitter {
  /** The instance as registered, with the last `update()` applied. */
  readonly instance: ServiceInstance;
  /**
   * Changes the weight and/or the metadata in place — the same key, on the same lease — so every watcher gets an
   * 'update' (weight 0: calls stop going to it, while it stays listed). `metadata` replaces the whole map.
   * Updates apply in the order they were called. Refused with InvalidArgumentError for any other field or a bad
   * value (nothing changed), FailedPreconditionError once deregistered; UnavailableError when the store does not
   * take the write — the registration then holds the new value (a re-registration writes it), so call again.
   */
  update(change: InstanceUpdate): Promise<ServiceInstance>;
  /** Revokes the lease: the instance disappears from every watcher at once. Idempotent. */
  deregister(): Promise<void>;
}

/** What `Registration.update()` may change. */
export interface InstanceUpdate {
  weight?: number;
  metadata?: Record<string, string>;
}

export interface Registry {
  register(spec: InstanceSpec): Promise<Registration>;
  /**
   * Live instances of a service from the local cache, after the first read. The first call for a service
   * starts its watch (prefix read + watch from the next revision) and resolves once the cache is filled.
   */
  instances(service: string): Promise<ServiceInstance[]>;
  /** The cached view, synchronously; empty until `instances()`/`watch()` started the service's watch. */
  cached(service: string): ServiceInstance[];
  /**
   * One instance, if registered: from the cache when the service is watched, else by one read that starts no
   * watch (for names that come from requests, e.g. a branch's service: each would otherwise keep a watch).
   */
  lookup(service: string, instanceId: string): Promise<ServiceInstance | undefined>;
  /**
   * Subscribes to changes of one service. The listener first gets an 'add' for every instance already known,
   * then each change. Returns the unsubscribe function.
   */
  watch(service: string, listener: (event: ChangeEvent) => void): () => void;
  /** Names of services with at least one instance (one read). */
  services(): Promise<string[]>;
  /** Deregisters everything this registry registered, stops every watch and closes the connection. */
  close(): Promise<void>;
}
