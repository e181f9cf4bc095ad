/**
 * A grpc-js resolver for `dmtp:///<service>` (and `dmtp://<name>/<service>` for a registry set up under a name),
 * for code that uses plain grpc-js clients: the channel's address list follows the registry's view of the
 * service, updated on every change, with `round_robin` as the default policy.
 *
 * DMTP's own client does not use it (it picks per call, see docs/architecture.md "Calls between services").
 *
 *   setupDmtpResolver(registry);
 *   const c = new grpc.Client('dmtp:///inventory', grpc.credentials.createInsecure());
 */
import { status as Status, type ChannelOptions } from '@grpc/grpc-js';
import {
  registerResolver,
  statusOrFromError,
  statusOrFromValue,
  type Endpoint,
  type GrpcUri,
  type Resolver,
  type ResolverListener,
} from '@grpc/grpc-js/build/src/experimental';
import { isAddress } from '../common/branch-ref';
import { logger } from '../common/log';
import { takesCalls } from '../registry/service-view';
import type { Registry, ServiceInstance } from '../registry/types';

const log = logger('rpc:resolver');

export const SCHEME = 'dmtp';
const DEFAULT_NAME = '';

/** The service config every dmtp:/// channel gets unless the channel sets its own. */
export const DEFAULT_SERVICE_CONFIG = { loadBalancingConfig: [{ round_robin: {} }], methodConfig: [] };

const registries = new Map<string, Registry>();
let registered = false;

/**
 * Makes `dmtp:///<service>` resolve through `registry` (or `dmtp://<name>/<service>` when `name` is given).
 * Returns a function that removes this registry again.
 */
export function setupDmtpResolver(registry: Registry, name = DEFAULT_NAME): () => void {
  registries.set(name, registry);
  if (!registered) {
    registerResolver(SCHEME, DmtpResolver);
    registered = true;
  }
  return () => {
    if (registries.get(name) === registry) registries.delete(name);
  };
}

/** "host:port" or "[v6]:port" → endpoint. */
export function endpointOf(address: string): Endpoint {
  const i = address.lastIndexOf(':');
  const host = address.slice(0, i).replace(/^\[|\]$/g, '');
  return { addresses: [{ host, port: Number(address.slice(i + 1)) }] };
}

class DmtpResolver implements Resolver {
  private readonly service: string;
  private readonly registryName: string;
  private unwatch?: () => void;
  private pending?: NodeJS.Immediate;
  private firstReadDone = false;
  private reading = false;
  /**
   * Instances of the last report left out for an address that is not host:port, as `instanceId@address`: each
   * is logged once while it stays registered, not on every change of the service.
   */
  private unusable = new Set<string>();

  constructor(
    target: GrpcUri,
    private readonly listener: ResolverListener,
    _options: ChannelOptions,
  ) {
    this.service = target.path.replace(/^\//, '');
    this.registryName = target.authority ?? DEFAULT_NAME;
  }

  static getDefaultAuthority(target: GrpcUri): string {
    return target.path.replace(/^\//, '');
  }

  updateResolution(): void {
    const registry = registries.get(this.registryName);
    if (!registry) {
      this.schedule(() =>
        this.listener(
          statusOrFromError({
            code: Status.UNAVAILABLE,
            details: `no DMTP registry set up for ${SCHEME}://${this.registryName}/ (setupDmtpResolver)`,
          }),
          {},
          null,
          '',
        ),
      );
      return;
    }
    if (!this.unwatch) {
      // every change reports the whole list, coalesced per tick: the channel diffs it against its subchannels
      this.unwatch = registry.watch(this.service, () => {
        if (this.firstReadDone) this.schedule(() => this.report(registry));
      });
      this.read(registry);
    } else if (this.firstReadDone) {
      this.schedule(() => this.report(registry));
    } else if (!this.reading) {
      this.read(registry); // the last read failed: the channel asks again (after its own backoff)
    }
  }

  /**
   * The first read of the service. A failure is reported to the channel (UNAVAILABLE: calls fail instead of
   * waiting), which calls updateResolution again after its backoff, and that reads again.
   */
  private read(registry: Registry): void {
    this.reading = true;
    registry.instances(this.service).then(
      () => {
        this.reading = false;
        if (!this.unwatch) return; // destroyed meanwhile
        this.firstReadDone = true;
        this.schedule(() => this.report(registry));
      },
      (err: unknown) => {
        this.reading = false;
        if (!this.unwatch) return;
        log.warn('registry read failed', { service: this.service, err: err as Error });
        this.schedule(() =>
          this.listener(
            statusOrFromError({
              code: Status.UNAVAILABLE,
              details: `registry read of '${this.service}' failed: ${(err as Error)?.message ?? String(err)}`,
            }),
            {},
            null,
            '',
          ),
        );
      },
    );
  }

  destroy(): void {
    this.unwatch?.();
    this.unwatch = undefined;
    this.firstReadDone = false;
    if (this.pending) clearImmediate(this.pending);
    this.pending = undefined;
  }

  /** Listener calls are never synchronous with the constructor or updateResolution (the resolver contract). */
  private schedule(fn: () => void): void {
    if (this.pending) return;
    this.pending = setImmediate(() => {
      this.pending = undefined;
      fn();
    });
  }

  private report(registry: Registry): void {
    if (!this.unwatch) return;
    const known = registry.cached(this.service);
    const live = known.filter(takesCalls);
    const unusable = new Set<string>();
    const instances: ServiceInstance[] = live.filter((i) => this.usable(i, unusable));
    this.unusable = unusable;
    if (instances.length === 0) {
      const why = [
        ...(known.length > live.length
          ? [`${known.length - live.length} registered with weight 0 take no calls`]
          : []),
        ...(live.length > 0 ? [`${live.length} left out: address not host:port`] : []),
      ];
      const skipped = why.length > 0 ? ` (${why.join('; ')})` : '';
      this.listener(
        statusOrFromError({
          code: Status.UNAVAILABLE,
          details: `no live instance of service '${this.service}'${skipped}`,
        }),
        {},
        statusOrFromValue(DEFAULT_SERVICE_CONFIG),
        `dmtp: ${this.service} has no instances`,
      );
      return;
    }
    this.listener(
      statusOrFromValue(instances.map((i) => endpointOf(i.address))),
      { 'dmtp.instances': instances },
      statusOrFromValue(DEFAULT_SERVICE_CONFIG),
      '',
    );
  }

  /**
   * Whether an instance's address can be a grpc-js endpoint. Anyone may register anything (a hand-written
   * registration, another language's SDK), and one endpoint grpc-js cannot connect to — no port, a port past
   * 65535, a URL — held every call of the channel waiting for a pick until its deadline, for every instance.
   */
  private usable(i: ServiceInstance, unusable: Set<string>): boolean {
    if (isAddress(i.address)) return true;
    const key = `${i.instanceId}@${i.address}`;
    unusable.add(key);
    if (!this.unusable.has(key)) {
      log.warn('instance left out: its address is not host:port', {
        service: this.service,
        instanceId: i.instanceId,
        address: i.address,
      });
    }
    return false;
  }
}
