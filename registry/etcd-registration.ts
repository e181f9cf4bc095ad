/**
 * One instance registered in etcd: its key written under a lease that etcd3 keeps alive. When the lease is
 * lost (etcd restarted without it, a pause longer than the TTL, someone revoked it) the registration emits
 * 'lost', writes the key again under a new lease — retrying with backoff until etcd answers — and emits
 * 'reregistered'. `deregister()` revokes the lease, so the key disappears from every watcher at once.
 *
 * The key can also go while the lease lives: someone deletes it (`etcdctl del`, a cleanup script). Nothing in
 * the lease says so, and the instance vanished from discovery for good while the registration stayed live. So
 * a live registration watches its own key, from the revision of its own write on, and puts a deleted key back
 * under the lease it holds (logged). A deletion is compared with the revision of the last write, so a late
 * event about a key already written again is no reason to write it once more; a key someone else wrote after
 * it (the same instance registered by another client) is theirs, and so is its deletion.
 *
 * States: starting → live ⇄ lost → closed (from any state). Only a live registration reacts to a loss or a
 * deletion, so a failed attempt's lease (which also reports 'lost') never starts a second loop, and the key's
 * deletion by its own deregistration (or by the loss of its lease) is not undone.
 *
 * `update()` changes the value in place: one put of the key under the lease held, in the order updates were
 * called. Every later write of the key (a re-registration, a deleted key put back) writes the value as updated.
 */
import { EventEmitter } from 'node:events';
import { EtcdLeaseInvalidError, type Etcd3, type IKeyValue, type Lease, type Watcher } from 'etcd3';
import { UnavailableError, type BackoffOptions, type Clock, type Logger } from '../common';
import { retryUntil } from './retry';
import type { InstanceUpdate, Registration, ServiceInstance } from './types';
import { deregistered, encodeInstance, updatedInstance } from './validate';

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
  private value: string;
  /** The value of this registration's last successful write of its key. */
  private writtenValue = '';
  /** The updates called so far, settled or not: the next one runs after them. */
  private updating: Promise<unknown> = Promise.resolve();
  /** Watch of the own key while live, to notice a deletion the lease does not report. */
  private keyWatch?: Watcher;
  /** Revision of the last write of the key by this registration. */
  private writtenAt = 0n;
  /** Revision of the last deletion of the key seen by the watch (0: none). */
  private deletedAt = 0n;
  private restoring?: Promise<void>;

  constructor(
    private inst: ServiceInstance,
    private readonly deps: EtcdRegistrationDeps,
  ) {
    super();
    this.value = encodeInstance(inst);
  }

  get instance(): ServiceInstance {
    return this.inst;
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
    this.watchKey(this.writtenAt + 1n);
    this.deps.log.debug('registered', this.fields());
  }

  deregister(): Promise<void> {
    return (this.closing ??= this.close());
  }

  update(change: InstanceUpdate): Promise<ServiceInstance> {
    const run = () => this.applyUpdate(change);
    const done = this.updating.then(run, run);
    this.updating = done.catch(() => undefined);
    return done;
  }

  private async applyUpdate(change: InstanceUpdate): Promise<ServiceInstance> {
    if (this.innerState === 'closed') throw deregistered(this.inst);
    const next = updatedInstance(this.inst, change);
    this.inst = next;
    this.value = encodeInstance(next);
    // While 'lost', the re-registration under way writes the new value.
    if (this.innerState !== 'live') return next;
    try {
      await this.putOnLease(this.current!);
    } catch (err) {
      if (this.closing) throw deregistered(next); // deregistered meanwhile: its lease revoked
      const { service, instanceId } = next;
      throw new UnavailableError(
        `could not write the update of '${service}/${instanceId}' to etcd; the registration holds it (a ` +
          're-registration writes it): update again',
        { cause: err, details: { service, instanceId } },
      );
    }
    this.deps.log.debug('registration updated', { ...this.fields(), weight: next.weight });
    return next;
  }

  /**
   * Writes the value as it is now under `lease`, noting the write. False when the lease is gone (etcd3 reports it
   * 'lost' now) or was replaced meanwhile: the re-registration writes the key. Any other failure is thrown.
   */
  private async putOnLease(lease: Lease): Promise<boolean> {
    const value = this.value;
    try {
      const res = await lease.put(this.deps.key).value(value).exec();
      if (lease === this.current) {
        this.wrote(res.header.revision);
        this.writtenValue = value;
      }
      return true;
    } catch (err) {
      if (err instanceof EtcdLeaseInvalidError || lease !== this.current) return false;
      throw err;
    }
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
      const value = this.value;
      const res = await lease.put(this.deps.key).value(value).exec();
      this.wrote(res.header.revision);
      this.writtenValue = value;
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
    const done = await retryUntil('re-registration', () => this.attempt(), this.retryOptions()).then(
      () => !this.stop.signal.aborted,
      () => false, // attempt() after close: the registration is gone, nothing to report
    );
    if (!done || this.innerState !== 'lost') return;
    this.innerState = 'live';
    this.deps.log.info('registered again', this.fields());
    this.emit('reregistered', { leaseId: this.currentId });
    this.restoreIfDeleted(); // a deletion seen while 'lost' but after the write above
    this.catchUpOnUpdate();
    // A loss between the write and this point was ignored (state was 'lost'): catch up on it now.
    if (this.current?.revoked()) this.onLost(this.current, new Error('lease lost while re-registering'));
  }

  /**
   * Watches the key from `fromRevision` (its own write + 1: nothing in between is missed). etcd3 resumes the
   * watch by itself after a broken connection; only a cancellation by etcd (its revision was compacted) ends
   * it, and then the key is read once — put back if it is missing — and watched again from that read.
   */
  private watchKey(fromRevision: bigint): void {
    if (this.innerState === 'closed') return;
    const w = this.deps.client
      .watch()
      .key(this.deps.key)
      .startRevision(fromRevision.toString())
      .withPreviousKV()
      .watcher();
    this.keyWatch = w;
    w.on('delete', (kv: IKeyValue, prev?: IKeyValue) => {
      if (this.keyWatch !== w) return;
      // Someone else wrote the key after us (the same instance registered by another client): the key was
      // theirs when deleted, and so was the deletion (their deregistration) — not ours to undo.
      if (prev && BigInt(prev.mod_revision) > this.writtenAt) return;
      const at = BigInt(kv.mod_revision);
      if (at > this.deletedAt) this.deletedAt = at;
      this.restoreIfDeleted();
    });
    w.on('error', (err: Error) => {
      if (this.keyWatch !== w) return;
      this.keyWatch = undefined;
      this.deps.log.info('the watch of the own key was cancelled; checking the key', {
        ...this.fields(),
        err,
      });
      void this.checkKey();
    });
  }

  /** Reads the key once (retried until etcd answers), notes it missing, and watches it again from there. */
  private async checkKey(): Promise<void> {
    await retryUntil(
      'registration key check',
      async () => {
        const res = await this.deps.client.kv.range({ key: Buffer.from(this.deps.key) });
        const at = BigInt(res.header.revision);
        if (res.kvs.length === 0 && at > this.deletedAt) this.deletedAt = at;
        this.watchKey(at + 1n);
        this.restoreIfDeleted();
      },
      this.retryOptions(),
    );
  }

  /** Starts putting the key back when a deletion newer than the last write was seen (one loop at a time). */
  private restoreIfDeleted(): void {
    if (this.restoring || this.innerState !== 'live' || this.deletedAt <= this.writtenAt) return;
    this.restoring = this.restore().finally(() => {
      this.restoring = undefined;
    });
  }

  private async restore(): Promise<void> {
    await retryUntil(
      'putting the deleted key back',
      async () => {
        while (this.innerState === 'live' && this.deletedAt > this.writtenAt) {
          const lease = this.current!;
          this.deps.log.info('the key was deleted behind the registration; putting it back under its lease', {
            ...this.fields(),
            deletedAt: this.deletedAt.toString(),
          });
          if (!(await this.putOnLease(lease))) return;
        }
      },
      this.retryOptions(),
    );
    this.catchUpOnUpdate();
  }

  /**
   * An update that came while the key was being written by something else — a re-registration (the update, seen
   * in state 'lost', wrote nothing) or a deleted key put back (the two puts may land in either order) — may have
   * been overwritten by the older value: writes the value as updated once more.
   */
  private catchUpOnUpdate(): void {
    if (this.innerState !== 'live' || this.writtenValue === this.value) return;
    this.update({}).catch((err: unknown) =>
      this.deps.log.warn('could not write the updated registration again', { ...this.fields(), err }),
    );
  }

  private wrote(revision: string): void {
    const at = BigInt(revision);
    if (at > this.writtenAt) this.writtenAt = at;
  }

  private retryOptions() {
    const { backoff, clock, log } = this.deps;
    const fields = { service: this.instance.service, instanceId: this.instance.instanceId };
    return { signal: this.stop.signal, backoff, clock, log, fields };
  }

  private async close(): Promise<void> {
    this.innerState = 'closed';
    this.stop.abort();
    // Not awaited: a cancel waits for etcd's answer, and a frozen etcd must not hold deregister() up.
    const w = this.keyWatch;
    this.keyWatch = undefined;
    void w
      ?.cancel()
      .catch((err: unknown) => this.deps.log.debug('key watch cancel failed', { ...this.fields(), err }));
    await this.restoring; // its loop stops at once now; a put in flight lands before the revoke, or fails
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
