/**
 * One instance registered in etcd: its key written under a lease that etcd3 keeps alive. When the lease is
 * lost (etcd restarted without it, a pause longer than the TTL, someone revoked it) the registration emits
 * 'lost', writes the key again under a new lease — retrying with backoff until etcd answers — and emits
 * 'reregistered'. `deregister()` revokes the lease, so the key disappears from every watcher at once.
 *
 * States: starting → live ⇄ lost → closed (from any state). Only a live registration reacts to a loss, so a
 * failed attempt's lease (which also reports 'lost') never starts a second loop.
 */
import { EventEmitter } from 'node:events';
import type { Etcd3, Lease } from 'etcd3';
import type { BackoffOptions, Clock, Logger } from '../common';
import { retryUntil } from './retry';
import type { Registration, ServiceInstance } from './types';
import { encodeInstance } from './validate';

export type RegistrationState = 'starting' | 'live' | 'lost' | 'closed';

export interface EtcdRegistrationDeps {
  client: Etcd3;
  key: string;
  leaseTtlSeconds: number;
  backoff: BackoffOptions;
  clock: Clock;
  log: Logger;
  /** Called once when the registration is closed, so the registry forgets it. */
  onClosed: (r: EtcdRegistration) => void;
}

export class EtcdRegistration extends EventEmitter implements Registration {
  private current?: Lease;
  private currentId?: string;
  private innerState: RegistrationState = 'starting';
  private readonly stop = new AbortController();
  private closing?: Promise<void>;
  private readonly value: string;

  constructor(
    readonly instance: ServiceInstance,
    private readonly deps: EtcdRegistrationDeps,
  ) {
    super();
    this.value = encodeInstance(instance);
  }

  get state(): RegistrationState {
    return this.innerState;
  }

  /** The etcd lease id (decimal string) the key is attached to now; undefined while none is granted. */
  get leaseId(): string | undefined {
    return this.currentId;
  }

  /** The etcd key of this instance. */
  get key(): string {
    return this.deps.key;
  }

  /** First write: throws (and cleans up) when etcd cannot be reached; the registry wraps the error. */
  async start(): Promise<void> {
    await this.attempt();
    if (this.innerState === 'starting') this.innerState = 'live';
    this.deps.log.debug('registered', this.fields());
  }

  deregister(): Promise<void> {
    return (this.closing ??= this.close());
  }

  private fields(): Record<string, unknown> {
    return {
      service: this.instance.service,
      instanceId: this.instance.instanceId,
      leaseId: this.currentId,
    };
  }

  /** Grants a lease and writes the key under it; on failure the lease is dropped and the error thrown. */
  private async attempt(): Promise<void> {
    const lease = this.deps.client.lease(this.deps.leaseTtlSeconds);
    this.current = lease;
    this.currentId = undefined;
    lease.on('lost', (err: Error) => this.onLost(lease, err));
    lease.on('keepaliveFailed', (err: unknown) =>
      this.deps.log.debug('lease keep-alive failed', { ...this.fields(), err }),
    );
    try {
      this.currentId = await lease.grant();
      await lease.put(this.deps.key).value(this.value);
    } catch (err) {
      lease.release(); // stop its keep-alive; an orphan lease on the server expires by its TTL
      throw err;
    }
    if (this.innerState === 'closed') throw new Error('deregistered while registering');
  }

  private onLost(lease: Lease, err: Error): void {
    if (lease !== this.current || this.innerState !== 'live') return;
    this.innerState = 'lost';
    this.deps.log.warn('lease lost; registering again under a new lease', { ...this.fields(), err });
    this.emit('lost', err);
    void this.reregister();
  }

  private async reregister(): Promise<void> {
    const done = await retryUntil('re-registration', () => this.attempt(), {
      signal: this.stop.signal,
      backoff: this.deps.backoff,
      clock: this.deps.clock,
      log: this.deps.log,
      fields: { service: this.instance.service, instanceId: this.instance.instanceId },
    }).then(
      () => !this.stop.signal.aborted,
      () => false, // attempt() after close: the registration is gone, nothing to report
    );
    if (!done || this.innerState !== 'lost') return;
    this.innerState = 'live';
    this.deps.log.info('registered again', this.fields());
    this.emit('reregistered', { leaseId: this.currentId });
    // A loss between the write and this point was ignored (state was 'lost'): catch up on it now.
    if (this.current?.revoked()) this.onLost(this.current, new Error('lease lost while re-registering'));
  }

  private async close(): Promise<void> {
    this.innerState = 'closed';
    this.stop.abort();
    const lease = this.current;
    try {
      if (lease) await lease.revoke();
    } catch (err) {
      lease?.release();
      this.deps.log.warn('could not revoke the lease; the instance disappears when its TTL ends', {
        ...this.fields(),
        err,
      });
    } finally {
      this.deps.onClosed(this);
    }
  }
}
