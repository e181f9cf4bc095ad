/**
 * An in-memory `Registry` FOR UNIT TESTS ONLY: no etcd, no leases, no persistence, one process. It keeps the
 * same observable behaviour as `EtcdRegistry` (the same contract test runs against both), so code above the
 * registry (rpc strategies, clients) can be unit-tested without etcd. Several `MemoryRegistry` objects sharing
 * one `MemoryStore` behave like several processes sharing one etcd. `loseLease()` simulates a lost lease.
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { FailedPreconditionError, logger, systemClock, type Clock, type Logger } from '../common';
import { ServiceView, type ChangeListener } from './service-view';
import type { InstanceSpec, InstanceUpdate, Registration, Registry, ServiceInstance } from './types';
import { deregistered, updatedInstance, validateServiceName, validateSpec } from './validate';

type StoreChange =
  { type: 'put'; instance: ServiceInstance } | { type: 'delete'; service: string; instanceId: string };

/** The shared "etcd" of memory registries: service → instance id → instance. */
export class MemoryStore {
  private readonly services = new Map<string, Map<string, ServiceInstance>>();
  private readonly changes = new EventEmitter();

  constructor() {
    this.changes.setMaxListeners(0);
  }

  put(instance: ServiceInstance): void {
    let m = this.services.get(instance.service);
    if (!m) this.services.set(instance.service, (m = new Map()));
    m.set(instance.instanceId, instance);
    this.changes.emit(instance.service, { type: 'put', instance } satisfies StoreChange);
  }

  delete(service: string, instanceId: string): void {
    const m = this.services.get(service);
    if (!m?.delete(instanceId)) return;
    if (m.size === 0) this.services.delete(service);
    this.changes.emit(service, { type: 'delete', service, instanceId } satisfies StoreChange);
  }

  list(service: string): Map<string, ServiceInstance> {
    return new Map(this.services.get(service) ?? []);
  }

  names(): string[] {
    return [...this.services.keys()].sort();
  }

  /** @internal */
  onChange(service: string, fn: (c: StoreChange) => void): () => void {
    this.changes.on(service, fn);
    return () => this.changes.off(service, fn);
  }
}

export interface MemoryRegistryOptions {
  /** Shared with other memory registries to simulate several processes; default: a private store. */
  store?: MemoryStore;
  /** Source of `startedAt`; default: the system clock. */
  clock?: Clock;
}

class MemoryRegistration extends EventEmitter implements Registration {
  private done = false;

  constructor(
    private inst: ServiceInstance,
    private readonly store: MemoryStore,
    private readonly onDone: (r: MemoryRegistration) => void,
  ) {
    super();
  }

  get instance(): ServiceInstance {
    return this.inst;
  }

  get live(): boolean {
    return !this.done;
  }

  async update(change: InstanceUpdate): Promise<ServiceInstance> {
    if (this.done) throw deregistered(this.inst);
    this.inst = updatedInstance(this.inst, change);
    this.store.put(this.inst);
    return this.inst;
  }

  async deregister(): Promise<void> {
    if (this.done) return;
    this.done = true;
    this.store.delete(this.instance.service, this.instance.instanceId);
    this.onDone(this);
  }
}

export class MemoryRegistry implements Registry {
  readonly store: MemoryStore;
  private readonly clock: Clock;
  private readonly log: Logger = logger('registry:memory');
  private readonly registrations = new Set<MemoryRegistration>();
  private readonly views = new Map<string, { view: ServiceView; unsubscribe: () => void }>();
  private closed = false;

  constructor(options: MemoryRegistryOptions = {}) {
    this.store = options.store ?? new MemoryStore();
    this.clock = options.clock ?? systemClock;
  }

  async register(spec: InstanceSpec): Promise<Registration> {
    this.assertOpen();
    const instanceId = spec?.instanceId ?? `${hostname()}-${process.pid}-${randomBytes(4).toString('hex')}`;
    const instance = validateSpec({ ...spec, instanceId }, this.clock.now());
    for (const r of this.registrations) {
      if (r.instance.service === instance.service && r.instance.instanceId === instance.instanceId) {
        throw new FailedPreconditionError(
          `'${instance.service}/${instance.instanceId}' is already registered`,
          {
            details: { service: instance.service, instanceId: instance.instanceId },
          },
        );
      }
    }
    const reg = new MemoryRegistration(instance, this.store, (r) => this.registrations.delete(r));
    this.registrations.add(reg);
    this.store.put(instance);
    return reg;
  }

  async instances(service: string): Promise<ServiceInstance[]> {
    return this.viewFor(service).snapshot();
  }

  async lookup(service: string, instanceId: string): Promise<ServiceInstance | undefined> {
    this.assertOpen();
    validateServiceName(service);
    return this.store.list(service).get(instanceId);
  }

  cached(service: string): ServiceInstance[] {
    return this.views.get(service)?.view.snapshot() ?? (validateServiceName(service), []);
  }

  watch(service: string, listener: ChangeListener): () => void {
    return this.viewFor(service).subscribe(listener);
  }

  async services(): Promise<string[]> {
    this.assertOpen();
    return this.store.names();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.registrations].map((r) => r.deregister()));
    for (const { unsubscribe } of this.views.values()) unsubscribe();
    this.views.clear();
  }

  /**
   * Simulates a lost lease (etcd restarted, long pause): the instance vanishes from every view, the
   * registration emits 'lost', then it comes back under a "new lease" and emits 'reregistered' — the
   * sequence `EtcdRegistry` goes through by itself.
   */
  async loseLease(registration: Registration): Promise<void> {
    const reg = [...this.registrations].find((r) => r === registration);
    if (!reg) throw new FailedPreconditionError('not a live registration of this registry');
    const { service, instanceId } = reg.instance;
    this.store.delete(service, instanceId);
    reg.emit('lost', new Error(`simulated lease loss of ${service}/${instanceId}`));
    await new Promise<void>((resolve) => setImmediate(resolve));
    if (!reg.live || this.closed) return;
    this.store.put(reg.instance);
    reg.emit('reregistered');
  }

  private viewFor(service: string): ServiceView {
    this.assertOpen();
    const known = this.views.get(service);
    if (known) return known.view;
    validateServiceName(service);
    const view = new ServiceView(service, this.log);
    view.reconcile(this.store.list(service));
    const unsubscribe = this.store.onChange(service, (c) =>
      c.type === 'put' ? view.upsert(c.instance) : view.remove(c.instanceId),
    );
    this.views.set(service, { view, unsubscribe });
    return view;
  }

  private assertOpen(): void {
    if (this.closed) throw new FailedPreconditionError('the registry is closed');
  }
}
