/**
 * Discovery of one service in etcd: one range read of `<prefix>/services/<service>/`, then a watch from the
 * read's revision + 1, feeding a `ServiceView`. Nothing happens between the read and the watch's first
 * revision, so no change is lost.
 *
 * When the watch stream breaks (etcd restarted, connection lost) or etcd cancels it (its revision was
 * compacted), the watch is dropped and the whole sync runs again — read (retried with backoff until etcd
 * answers), reconcile the cache against the read (emitting exactly the difference), watch from the new
 * revision. A re-read rather than etcd3's own resume, because a resume cannot recover from a compaction or an
 * etcd that came back with other data, and one path for every failure is easier to trust.
 */
import type { Etcd3, IKeyValue, Watcher } from 'etcd3';
import { UnavailableError, type BackoffOptions, type Clock, type Logger } from '../common';
import { readPrefix, type PageLimit } from './etcd-range';
import { retryUntil } from './retry';
import { ServiceView } from './service-view';
import type { ServiceInstance } from './types';
import type { ValueDecoder } from './validate';

export interface EtcdServiceWatchDeps {
  client: Etcd3;
  /** `<prefix>/services/<service>/` */
  keyPrefix: string;
  /** Keys per page of the full read. */
  pageKeys: number;
  decoder: ValueDecoder;
  backoff: BackoffOptions;
  clock: Clock;
  log: Logger;
}

type Waiter = { resolve: () => void; reject: (err: unknown) => void };

export class EtcdServiceWatch {
  readonly view: ServiceView;
  private watcher?: Watcher;
  private filled = false;
  private waiters: Waiter[] = [];
  private syncing?: Promise<void>;
  private again = false;
  private readonly stop = new AbortController();
  /** Page size of the full read, lowered (and kept) when a page of large values had to be halved. */
  private readonly page: PageLimit;

  constructor(
    readonly service: string,
    private readonly deps: EtcdServiceWatchDeps,
  ) {
    this.view = new ServiceView(service, deps.log);
    this.page = { keys: deps.pageKeys };
  }

  /** Starts the first sync in the background. */
  start(): this {
    this.resync('start');
    return this;
  }

  /**
   * Resolves once the cache has been filled by a first read; until then, rejects with UnavailableError when
   * an attempt fails (the sync itself keeps retrying in the background).
   */
  whenReady(): Promise<void> {
    if (this.filled) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Revision the current watch started from (for tests and diagnostics); undefined between syncs. */
  get watchRevision(): string | undefined {
    const rev = this.watcher?.lastRevision();
    return rev === undefined || rev === null ? undefined : String(rev);
  }

  async close(): Promise<void> {
    this.stop.abort();
    this.settleWaiters(
      new UnavailableError(`discovery of '${this.service}' stopped: the registry is closed`),
    );
    const w = this.dropWatcher();
    await this.syncing;
    if (w) await w;
  }

  /** Asks for a read-reconcile-watch cycle; cycles never overlap, and requests during one coalesce. */
  private resync(reason: string): void {
    if (this.stop.signal.aborted) return;
    if (this.syncing) {
      this.again = true;
      return;
    }
    if (reason !== 'start')
      this.deps.log.info('re-reading the service to reconcile', { service: this.service, reason });
    this.syncing = (async () => {
      do {
        this.again = false;
        await retryUntil(
          'registry read',
          () => this.syncOnce(),
          this.retryOptions(),
          (err) => this.onReadFailure(err),
        );
      } while (this.again && !this.stop.signal.aborted);
    })().finally(() => {
      this.syncing = undefined;
    });
  }

  private retryOptions() {
    const { backoff, clock, log } = this.deps;
    return { signal: this.stop.signal, backoff, clock, log, fields: { service: this.service } };
  }

  private async syncOnce(): Promise<void> {
    void this.dropWatcher();
    const pageKeys = this.page.keys;
    let res;
    try {
      res = await readPrefix(this.deps.client, this.deps.keyPrefix, this.page);
    } finally {
      if (this.page.keys < pageKeys) {
        this.deps.log.warn('a page of the read passed the etcd client limit; reading in smaller pages', {
          service: this.service,
          pageKeys: this.page.keys,
        });
      }
    }
    if (this.stop.signal.aborted) return;
    const next = new Map<string, ServiceInstance>();
    for (const kv of res.kvs) {
      const instance = this.decode(kv);
      if (instance) next.set(instance.instanceId, instance);
    }
    this.view.reconcile(next);
    this.filled = true;
    this.settleWaiters();
    this.startWatch(BigInt(res.revision) + 1n);
  }

  private startWatch(fromRevision: bigint): void {
    const w = this.deps.client
      .watch()
      .prefix(this.deps.keyPrefix)
      .startRevision(fromRevision.toString())
      .watcher();
    this.watcher = w;
    const current = () => this.watcher === w && !this.stop.signal.aborted;
    w.on('put', (kv: IKeyValue) => {
      if (!current()) return;
      const instance = this.decode(kv);
      if (instance) this.view.upsert(instance);
      else this.view.remove(this.idOf(kv)); // the key now holds something that is no longer an instance
    });
    w.on('delete', (kv: IKeyValue) => {
      if (!current()) return;
      this.deps.decoder.forget(kv.key.toString());
      this.view.remove(this.idOf(kv));
    });
    w.on('disconnected', (err: Error) => {
      if (current()) this.resync(`watch disconnected: ${err?.message ?? err}`);
    });
    w.on('error', (err: Error) => {
      // etcd cancelled the watch, typically because its start revision was compacted.
      if (current()) this.resync(`watch cancelled: ${err?.message ?? err}`);
    });
  }

  /** Detaches the current watcher; returns the cancellation (never rejecting) for whoever wants to wait. */
  private dropWatcher(): Promise<void> | undefined {
    const w = this.watcher;
    if (!w) return undefined;
    this.watcher = undefined;
    return w
      .cancel()
      .catch((err: unknown) => this.deps.log.debug('watch cancel failed', { service: this.service, err }));
  }

  private idOf(kv: IKeyValue): string {
    return kv.key.toString().slice(this.deps.keyPrefix.length);
  }

  private decode(kv: IKeyValue): ServiceInstance | undefined {
    const key = kv.key.toString();
    const id = this.idOf(kv);
    return this.deps.decoder.decode(key, this.service, id, kv.value.toString());
  }

  private onReadFailure(err: unknown): void {
    if (this.filled) return;
    this.settleWaiters(
      new UnavailableError(`cannot read the instances of '${this.service}' from etcd`, {
        cause: err,
        details: { service: this.service },
      }),
    );
  }

  private settleWaiters(err?: unknown): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) {
      if (err === undefined) w.resolve();
      else w.reject(err);
    }
  }
}
