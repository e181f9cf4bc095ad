/**
 * One service's local view: the cache that answers `cached()` with no round trip, and the subscribers told
 * about each change. Both registries feed it: single changes from a watch (`upsert`, `remove`) and whole
 * re-reads (`reconcile`, after a reconnect or a compacted watch), which emit exactly the difference between
 * the old cache and the new read — nothing lost, nothing repeated.
 */
import type { Logger } from '../common';
import type { ChangeEvent, ServiceInstance } from './types';

export type ChangeListener = (event: ChangeEvent) => void;

/**
 * Whether calls may be sent to the instance: one registered with weight 0 is known (listed, looked up, reachable
 * by its address) but takes no new calls — a canary parked, an instance being drained by hand.
 */
export function takesCalls(instance: ServiceInstance): boolean {
  return instance.weight !== 0;
}

/** True when two instances would look the same to a caller (same key, same stored value). */
export function sameInstance(a: ServiceInstance, b: ServiceInstance): boolean {
  return (
    a.service === b.service &&
    a.instanceId === b.instanceId &&
    a.address === b.address &&
    a.version === b.version &&
    a.zone === b.zone &&
    a.weight === b.weight &&
    a.startedAt === b.startedAt &&
    sameStrings(a.metadata, b.metadata)
  );
}

function sameStrings(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && a[k] === b[k]);
}

export class ServiceView {
  private readonly byId = new Map<string, ServiceInstance>();
  private readonly listeners = new Set<ChangeListener>();
  /**
   * Immutable snapshot sorted by instance id, so `cached()` costs one array copy; dropped on every change and
   * made again when next asked for, so a burst of changes (a thousand leases ending at once) sorts once.
   */
  private snap: readonly ServiceInstance[] | undefined = [];

  constructor(
    readonly service: string,
    private readonly log: Logger,
  ) {}

  snapshot(): ServiceInstance[] {
    return this.sorted().slice();
  }

  has(instanceId: string): boolean {
    return this.byId.has(instanceId);
  }

  /** Subscribes; the listener first gets an 'add' for every instance already in the cache. */
  subscribe(listener: ChangeListener): () => void {
    const wrapped: ChangeListener = (e) => listener(e);
    for (const instance of this.sorted()) this.call(wrapped, { type: 'add', instance });
    this.listeners.add(wrapped);
    return () => {
      this.listeners.delete(wrapped);
    };
  }

  get subscribers(): number {
    return this.listeners.size;
  }

  /** A key was put: 'add' if new, 'update' if its value changed, nothing if it is the same. */
  upsert(instance: ServiceInstance): void {
    const previous = this.byId.get(instance.instanceId);
    if (previous && sameInstance(previous, instance)) return;
    this.byId.set(instance.instanceId, instance);
    this.refresh();
    this.emit(previous ? { type: 'update', instance, previous } : { type: 'add', instance });
  }

  /** A key was deleted (or now holds a value that is no longer a valid instance). */
  remove(instanceId: string): void {
    const instance = this.byId.get(instanceId);
    if (!instance) return;
    this.byId.delete(instanceId);
    this.refresh();
    this.emit({ type: 'remove', instance });
  }

  /** Replaces the cache by a fresh read, emitting only the difference. */
  reconcile(next: ReadonlyMap<string, ServiceInstance>): void {
    const events: ChangeEvent[] = [];
    for (const [id, instance] of this.byId) {
      if (!next.has(id)) events.push({ type: 'remove', instance });
    }
    for (const [id, instance] of next) {
      const previous = this.byId.get(id);
      if (!previous) events.push({ type: 'add', instance });
      else if (!sameInstance(previous, instance)) events.push({ type: 'update', instance, previous });
    }
    if (events.length === 0) return;
    this.byId.clear();
    for (const [id, instance] of next) this.byId.set(id, instance);
    this.refresh();
    for (const e of events) this.emit(e);
  }

  private refresh(): void {
    this.snap = undefined;
  }

  private sorted(): readonly ServiceInstance[] {
    return (this.snap ??= Object.freeze(
      [...this.byId.values()].sort((a, b) =>
        a.instanceId < b.instanceId ? -1 : a.instanceId > b.instanceId ? 1 : 0,
      ),
    ));
  }

  private emit(event: ChangeEvent): void {
    for (const l of [...this.listeners]) this.call(l, event);
  }

  /** A throwing subscriber must not stop the others, nor the watch that feeds them. */
  private call(listener: ChangeListener, event: ChangeEvent): void {
    try {
      listener(event);
    } catch (err) {
      this.log.error('a registry subscriber threw; the watch goes on', {
        service: this.service,
        event: event.type,
        err,
      });
    }
  }
}
