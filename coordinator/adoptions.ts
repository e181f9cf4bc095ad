/**
 * HA: the transactions of failed coordinators this one took over. One manager per failed owner, on its own
 * etcd log fenced by the owner's lock this coordinator won (ha.ts): recovered when adopted (COMMITTING ⇒ commit
 * again, anything undecided ⇒ abort), dropped without writing anything when that lock is fenced out, released
 * once it is idle and its log is empty. The HaMember calls in here through the Coordinator's hooks.
 */
import type { ICompare } from 'etcd3';
import { logger } from '../common';
import type { AdoptedManager } from './ha-router';
import type { EtcdTxLog } from './log/etcd-log';
import type { TransactionManager } from './manager';

export interface Adopted extends AdoptedManager {
  log: EtcdTxLog;
}

export interface AdoptionsDeps {
  /** The coordinator adopting (for the log lines). */
  id: string;
  /** An etcd log fenced by `fence` (the owner's lock), calling `onFenceLost` when a write was fenced out. */
  makeLog(fence: () => ICompare[], onFenceLost: () => void): EtcdTxLog;
  /** A manager that takes over `owner`'s transactions from `log`. */
  makeManager(owner: string, log: EtcdTxLog): TransactionManager;
  /** 'adopted' (owner, what recovery found) and 'released' (owner) notices for the Coordinator's listeners. */
  emit(event: 'adopted' | 'released', ...args: unknown[]): void;
}

const log = logger('coordinator');

export class Adoptions {
  /** By owner id; read by the HA router (`routedBackend`) for every call. */
  readonly byOwner = new Map<string, Adopted>();

  constructor(private readonly deps: AdoptionsDeps) {}

  /** Takes over `owner`'s transactions: its log is loaded and recovered before calls for it are routed here. */
  async adopt(owner: string, fence: () => ICompare[]): Promise<void> {
    const txLog = this.deps.makeLog(fence, () => this.drop(owner));
    const manager = this.deps.makeManager(owner, txLog);
    const entry: Adopted = { manager, log: txLog, ready: false };
    this.byOwner.set(owner, entry);
    try {
      const recovered = await manager.start();
      entry.ready = true;
      log.info('took over a failed coordinator', { id: this.deps.id, owner, ...recovered });
      this.deps.emit('adopted', owner, recovered);
    } catch (err) {
      // A drop() during the recovery (its fence lost) already removed it; a later adoption's entry is not this one.
      if (this.byOwner.get(owner) === entry) this.byOwner.delete(owner);
      await manager.stop();
      await txLog.close().catch(() => undefined);
      throw err;
    }
  }

  /** An adopted owner's lock is gone (fenced): forget its manager without writing anything. */
  drop(owner: string): void {
    const a = this.byOwner.get(owner);
    if (!a) return;
    this.byOwner.delete(owner);
    log.warn('dropped taken-over transactions: ownership lost', { id: this.deps.id, owner });
    void a.manager.stop();
    void a.log.close().catch(() => undefined);
  }

  /** True when nothing of `owner`'s is in flight here that this coordinator can finish (or it is not adopted). */
  idle(owner: string): boolean {
    // Committed events waiting for a sink this coordinator lacks do not hold the owner: its own coordinator has one.
    return (this.byOwner.get(owner)?.manager.busy ?? 0) === 0;
  }

  /** Gives `owner`'s transactions up (its log is empty): its manager stops and its log closes. */
  async release(owner: string): Promise<void> {
    const a = this.byOwner.get(owner);
    if (!a) return;
    this.byOwner.delete(owner);
    await a.manager.stop();
    await a.log.close().catch(() => undefined);
    this.deps.emit('released', owner);
  }

  /** True when every transaction of `owner` is finished: none in flight here, and its log holds nothing. */
  async finished(owner: string): Promise<boolean> {
    const a = this.byOwner.get(owner);
    if (!a?.ready || a.manager.inFlight > 0) return false;
    await a.log.drained();
    return (await a.log.load(owner)).length === 0;
  }

  managers(): TransactionManager[] {
    return [...this.byOwner.values()].map((a) => a.manager);
  }

  logs(): EtcdTxLog[] {
    return [...this.byOwner.values()].map((a) => a.log);
  }

  managerOf(owner: string): TransactionManager | undefined {
    return this.byOwner.get(owner)?.manager;
  }

  logOf(owner: string): EtcdTxLog | undefined {
    return this.byOwner.get(owner)?.log;
  }

  /** Stops every adopted manager (their timers and retries), now, writing nothing more (a step-down). */
  halt(): void {
    for (const a of this.byOwner.values()) void a.manager.stop();
  }

  /** Stops every adopted manager, waiting for each. */
  async stopManagers(): Promise<void> {
    for (const a of this.byOwner.values()) await a.manager.stop();
  }

  /** Closes every adopted log and forgets them all (the end of the coordinator's stop). */
  async closeAll(): Promise<void> {
    for (const a of this.byOwner.values()) await a.log.close().catch(() => undefined);
    this.byOwner.clear();
  }
}
