/**
 * Coordinator HA on etcd: ownership of transactions, takeover of a failed coordinator's transactions, fencing.
 *
 * Keys (under the log's prefix P; the holder's lease is the "ownership lease", TTL `leaseTtlSeconds`):
 * - `P/ha/members/<owner>`  persistent: every coordinator id that ever owned transactions here, until retired (by
 *                           itself at a graceful stop, or by its taker once all it owned is long finished).
 * - `P/ha/owners/<owner>`   the ownership lock of `<owner>`'s transactions: `{"holder":<id>}` under the holder's
 *                           lease. Whoever holds it may write `P/tx/<owner>/…`; every such write compares the
 *                           lock's mod revision with the one the holder created (the fence). A lease that ends
 *                           deletes the lock, a re-created lock has a new mod revision: a paused ex-holder that
 *                           wakes up has every write refused by etcd itself.
 * - `P/services/dmtp-coordinator-owner/<owner>`  the route: the holder's address, in the registry's value format
 *                           (so initiators and participants find "who answers for owner X now" through the
 *                           registry), written only under the lock's compare, under the holder's lease.
 * - `P/ha/reclaim/<owner>`  a restarted coordinator asks the taker of its id to hand its transactions back.
 *
 * Election: a lock is created only if absent (`create_revision == 0`), so exactly one survivor wins an orphan.
 * A coordinator starting with id X takes X's lock when it is free, or from a previous incarnation of itself
 * (`holder == X`: that process is dead or paused, and is fenced out by the new mod revision) — unless the
 * address of X's route answers the health of `dmtp-coordinator/X` SERVING: a live twin, and the start is
 * refused. If another coordinator took X over, X does not fight: it writes its reclaim key and waits; the taker
 * hands X back once none of X's transactions is live any more (deletes lock + route), then X takes its lock and
 * recovers (its log is then empty of undecided work).
 */
import { EventEmitter } from 'node:events';
import type { Etcd3, ICompare, IRequestOp, Lease } from 'etcd3';
import { checkWholeNumber, FailedPreconditionError, logger, MAX_TIMER_MS, withoutUndefined } from '../common';
import { prefixEnd } from '../registry';
import { checkHealth } from '../rpc';
import type { TlsOptions } from '../rpc/tls';

export const HA_DEFAULTS = {
  /** TTL of the ownership lease: how long a dead coordinator's transactions wait for a taker at most. */
  leaseTtlSeconds: 10,
  /** Period of the scan for orphans, reclaim requests and the own lock. */
  scanIntervalMs: 500,
  /** Deadline of one etcd request. */
  requestTimeoutMs: 5_000,
  /**
   * At start, the own lock held under another lease is asked about: the address it routes to gets a health Check
   * for `dmtp-coordinator/<id>` within this long. SERVING there is a twin started by mistake (the start is
   * refused); anything else (refused, no answer, another id) is a previous incarnation, taken over.
   */
  twinProbeMs: 2_000,
  /**
   * An owner taken over whose transactions have all been finished (none in flight here, none in its log) for this
   * long is retired: its member key, lock and route are deleted and its manager stops, so a coordinator id that
   * never comes back (the default `<hostname>-<pid>` never does) is not held for good. The Coordinator sets it to
   * the outcome retention: past it, nothing of that owner is left to answer for.
   */
  retireAfterMs: 3_600_000,
};

export type HaOptions = Partial<typeof HA_DEFAULTS>;

/** etcd3 keeps a lease alive with timers of 1000 × TTL ms: past the longest Node timer they would run every 1 ms. */
const MAX_LEASE_TTL_S = Math.floor(MAX_TIMER_MS / 1000);

/**
 * The options over HA_DEFAULTS, checked (INVALID_ARGUMENT naming `ha.<option>` and the value): whole numbers, the
 * periods and deadlines in 1..MAX_TIMER_MS, as they go to timers and etcd deadlines (a scan period of 0 or NaN was
 * a busy loop; a NaN deadline made etcd3 throw outside any call, ending the process). `retireAfterMs` at least
 * 1: 0 or less retired a taken-over owner at its first quiet scan. Keep it at least the outcome retention
 * (docs/configuration.md); shorter is allowed, as tests retire owners within seconds.
 */
export function compileHaOptions(o: HaOptions = {}): typeof HA_DEFAULTS {
  const c = { ...HA_DEFAULTS, ...withoutUndefined(o) };
  checkWholeNumber('coordinator', 'ha.leaseTtlSeconds', c.leaseTtlSeconds, 1, MAX_LEASE_TTL_S);
  for (const k of ['scanIntervalMs', 'requestTimeoutMs', 'twinProbeMs'] as const)
    checkWholeNumber('coordinator', `ha.${k}`, c[k], 1, MAX_TIMER_MS);
  checkWholeNumber('coordinator', 'ha.retireAfterMs', c.retireAfterMs, 1, Number.MAX_SAFE_INTEGER);
  return c;
}

/** The health name a coordinator reports SERVING for while it runs as `id` (what the twin probe asks). */
export const ownHealthName = (id: string): string => `dmtp-coordinator/${id}`;

/** The address in a route's value (the registry's JSON), if it is one this id wrote. */
function routeAddress(value: Buffer, id: string): string | undefined {
  try {
    const v = JSON.parse(value.toString()) as { address?: unknown; metadata?: { holder?: unknown } };
    return typeof v.address === 'string' && v.address && v.metadata?.holder === id ? v.address : undefined;
  } catch {
    return undefined;
  }
}

/** Registry service whose instance `<owner>` is the address answering for owner's transactions now. */
export const OWNER_SERVICE = 'dmtp-coordinator-owner';

export const haKeys = {
  member: (prefix: string, owner: string) => `${prefix}/ha/members/${owner}`,
  lock: (prefix: string, owner: string) => `${prefix}/ha/owners/${owner}`,
  reclaim: (prefix: string, owner: string) => `${prefix}/ha/reclaim/${owner}`,
  route: (prefix: string, owner: string) => `${prefix}/services/${OWNER_SERVICE}/${owner}`,
};

/** What the coordinator does when ownership changes hands. */
export interface HaHooks {
  /** Won owner's lock: load its transactions and recover them (writes fenced with `fence`). */
  adopt(owner: string, fence: () => ICompare[]): Promise<void>;
  /** Lost an adopted owner's lock (fenced): drop its manager without writing anything. */
  drop(owner: string): void;
  /** No live transaction of this adopted owner: it may be handed back. */
  idle(owner: string): boolean;
  /** Stops the adopted owner's manager before its lock is handed back (or the owner is retired). */
  release(owner: string): Promise<void>;
  /** True when every transaction of the adopted owner is finished: none in flight here, its log empty. */
  finished(owner: string): Promise<boolean>;
  /** This coordinator lost its own ownership (lease ended, lock taken): it must stop at once. */
  stepDown(reason: string): void;
}

const log = logger('coordinator:ha');

interface LockValue {
  holder: string;
}

export class HaMember extends EventEmitter {
  readonly config: typeof HA_DEFAULTS;
  private lease?: Lease;
  private leaseId = '';
  /** Owners whose lock this member holds → the lock's mod revision (the fence). */
  private readonly held = new Map<string, string>();
  private timer?: NodeJS.Timeout;
  private scanning = false;
  /** The scan round in progress, if any: stopScanning() waits for it (it may be taking an owner over). */
  private round?: Promise<void>;
  private stopped = false;
  private interrupted = false;
  private steppedDown = false;
  private address = '';
  private readonly adopting = new Set<string>();
  /** Adopted owners found with all their transactions finished, since when (for retirement). */
  private readonly finishedSince = new Map<string, number>();
  /** Locks given up but not deleted yet (etcd did not answer): deleted again at every scan, or they would stay. */
  private readonly releasing = new Map<string, string>();
  /** Owners held whose route could not be written: written again at every scan. */
  private readonly unrouted = new Set<string>();
  private nextRetireCheckMs = 0;

  constructor(
    private readonly client: Etcd3,
    private readonly prefix: string,
    readonly id: string,
    private readonly hooks: HaHooks,
    options: HaOptions = {},
    /** TLS of the twin probe (the coordinators' own TLS). */
    private readonly tls?: TlsOptions,
  ) {
    super();
    this.config = compileHaOptions(options); // refused here, before the lease is granted
  }

  /** The compares every log write for `owner` carries: its lock is still the one this member created. */
  fence(owner: string): () => ICompare[] {
    const key = Buffer.from(haKeys.lock(this.prefix, owner));
    return () => [{ key, target: 'Mod', result: 'Equal', mod_revision: this.held.get(owner) ?? '-1' }];
  }

  /** Owners this member answers for now (its own id first once acquired). */
  owners(): string[] {
    return [...this.held.keys()];
  }

  /** Grants the ownership lease and takes the own lock; waits while a taker still holds it. */
  async start(): Promise<void> {
    const lease = this.client.lease(this.config.leaseTtlSeconds);
    this.lease = lease;
    this.leaseId = await lease.grant(); // a grant that fails fails the start (no lease was ever held)
    lease.on('lost', (err: Error) => this.stepDown(`ownership lease lost: ${err.message}`));
    let waited = false;
    for (;;) {
      if (this.stopped || this.interrupted)
        throw new Error(`coordinator ${this.id} stopped while waiting for its ownership`);
      const holder = await this.tryAcquire(this.id, true);
      if (holder === this.id) break;
      if (!waited) log.warn('own transactions are held by a taker; asking for them back', { holder });
      waited = true;
      await this.kv({
        compare: [],
        success: [this.put(haKeys.reclaim(this.prefix, this.id), this.leaseId)],
        failure: [],
      });
      await new Promise((r) => setTimeout(r, this.config.scanIntervalMs));
    }
    if (waited)
      await this.kv({ compare: [], success: [this.del(haKeys.reclaim(this.prefix, this.id))], failure: [] });
    // stop() may have run while the lock was being taken: no scans after it (they would keep the process up).
    if (this.stopped) throw new Error(`coordinator ${this.id} stopped while taking its ownership`);
    this.timer = setInterval(() => {
      if (!this.scanning) this.round = this.scan();
    }, this.config.scanIntervalMs);
  }

  /**
   * Ends the scan and waits for a round in progress: the first step of a graceful stop, so that no owner is taken
   * over (its manager started) after the coordinator stopped its managers. The locks and the lease stay until stop().
   */
  async stopScanning(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.round;
  }

  /** Ends a start() waiting for its ownership at its next turn (the coordinator was stopped meanwhile). */
  interrupt(): void {
    this.interrupted = true;
  }

  /** Publishes this member's address as the route of every owner it holds (after the server is bound). */
  async serve(address: string): Promise<void> {
    this.address = address;
    for (const owner of this.held.keys()) await this.writeRoute(owner);
  }

  /**
   * Graceful stop: owners `retire` lets go (nothing in flight for `retireAfterMs` and an empty log) are retired
   * (member, lock and route deleted: nobody takes over nothing); the lease is revoked, so the other locks vanish
   * and survivors adopt those owners.
   */
  async stop(retire: (owner: string) => Promise<boolean>): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (!this.steppedDown) {
      for (const [owner, rev] of this.held) {
        try {
          if (!(await retire(owner))) continue;
          await this.deleteOwnerKeys(owner, rev);
        } catch (err) {
          log.warn('could not retire an owner; a survivor will take it over', { owner, err: err as Error });
        }
      }
    }
    this.held.clear();
    try {
      await this.lease?.revoke();
    } catch {
      this.lease?.release();
    }
  }

  // ---- internals -------------------------------------------------------------------------------------------

  private stepDown(reason: string): void {
    if (this.stopped || this.steppedDown) return;
    this.steppedDown = true;
    if (this.timer) clearInterval(this.timer);
    log.error('stepping down: ownership lost', { id: this.id, reason });
    this.held.clear();
    this.hooks.stepDown(reason);
  }

  private lockIs(owner: string, rev: string): ICompare {
    return {
      key: Buffer.from(haKeys.lock(this.prefix, owner)),
      target: 'Mod',
      result: 'Equal',
      mod_revision: rev,
    };
  }

  private put(key: string, value: string): IRequestOp {
    return { request_put: { key: Buffer.from(key), value: Buffer.from(value), lease: this.leaseId } };
  }

  private del(key: string): IRequestOp {
    return { request_delete_range: { key: Buffer.from(key) } };
  }

  private kv(req: Parameters<Etcd3['kv']['txn']>[0]) {
    return this.client.kv.txn(req, { deadline: Date.now() + this.config.requestTimeoutMs });
  }

  private routeValue(): string {
    return JSON.stringify({
      address: this.address,
      version: '',
      zone: '',
      weight: 1,
      metadata: { holder: this.id },
      startedAt: Date.now(),
    });
  }

  /**
   * Create-if-absent of owner's lock (with the member key, and the route once serving). For the own id, a lock
   * of a previous incarnation (holder == own id) is taken over too. Returns the holder after the attempt.
   */
  private async tryAcquire(owner: string, own: boolean): Promise<string> {
    const lockKey = Buffer.from(haKeys.lock(this.prefix, owner));
    const value = JSON.stringify({ holder: this.id } satisfies LockValue);
    const routed = this.address !== '';
    const writes: IRequestOp[] = [
      this.put(haKeys.lock(this.prefix, owner), value),
      { request_put: { key: Buffer.from(haKeys.member(this.prefix, owner)), value: Buffer.from(owner) } },
      routed
        ? this.put(haKeys.route(this.prefix, owner), this.routeValue())
        : this.del(haKeys.route(this.prefix, owner)),
    ];
    // serve() may have run while this went to etcd without a route: it skipped the owner (not held yet).
    const won = async (revision: string) => {
      this.held.set(owner, revision);
      if (!routed && this.address) {
        await this.writeRoute(owner).catch((err: Error) => {
          log.warn('could not write a route; trying again at the next scan', { owner, err });
          this.unrouted.add(owner);
        });
      }
      return this.id;
    };
    const routeKey = Buffer.from(haKeys.route(this.prefix, owner));
    const res = await this.kv({
      compare: [{ key: lockKey, target: 'Create', result: 'Equal', create_revision: 0 }],
      success: writes,
      failure: [{ request_range: { key: lockKey } }, { request_range: { key: routeKey } }],
    });
    if (res.succeeded) return won(String(res.header.revision));
    const kv = res.responses[0]?.response_range?.kvs?.[0];
    if (!kv) return ''; // deleted meanwhile: next round
    const holder = (JSON.parse(kv.value.toString()) as LockValue).holder;
    if (!own || holder !== this.id) return holder;
    // This id's lock under another lease: a previous incarnation (dead, or paused and about to be fenced out) —
    // or a twin started with the same id by mistake, serving. Taking a live twin's lock would fence it out and
    // end its in-flight commits "unknown", so ask the address it routes to first.
    const route = res.responses[1]?.response_range?.kvs?.[0];
    const twin = route && routeAddress(route.value, this.id);
    const probe =
      twin && (await checkHealth(twin, ownHealthName(this.id), this.config.twinProbeMs, this.tls));
    if (probe === 'SERVING') {
      throw new FailedPreconditionError(
        `coordinator '${this.id}' is already running, serving at ${twin}: stop it first, or give this one ` +
          'another id (two coordinators with one id would fence each other out)',
        { details: { coordinatorId: this.id, address: twin } },
      );
    }
    const steal = await this.kv({
      compare: [this.lockIs(owner, String(kv.mod_revision))],
      success: writes,
      failure: [],
    });
    if (!steal.succeeded) return '';
    log.info('took over the lock of a previous incarnation', { owner });
    return won(String(steal.header.revision));
  }

  private async writeRoute(owner: string): Promise<void> {
    const rev = this.held.get(owner);
    if (!rev) return;
    const res = await this.kv({
      compare: [this.lockIs(owner, rev)],
      success: [this.put(haKeys.route(this.prefix, owner), this.routeValue())],
      failure: [],
    });
    if (!res.succeeded) this.lost(owner, 'lock changed before the route was written');
  }

  private lost(owner: string, reason: string): void {
    if (!this.held.has(owner)) return;
    if (owner === this.id) return this.stepDown(reason);
    this.held.delete(owner);
    this.forgetOwner(owner);
    log.warn('lost an adopted owner', { owner, reason });
    this.hooks.drop(owner);
  }

  /** One round: check own locks, campaign for orphans, hand back reclaimed owners. */
  private async scan(): Promise<void> {
    if (this.scanning || this.stopped || this.steppedDown) return;
    this.scanning = true;
    try {
      const root = `${this.prefix}/ha/`;
      const res = await this.client.kv.range(
        { key: Buffer.from(root), range_end: prefixEnd(Buffer.from(root)) },
        { deadline: Date.now() + this.config.requestTimeoutMs },
      );
      const members = new Set<string>();
      const locks = new Map<string, { holder: string; rev: string }>();
      const reclaims = new Map<string, string>();
      for (const kv of res.kvs) {
        const rest = kv.key.toString().slice(root.length);
        const [kind, owner] = [rest.slice(0, rest.indexOf('/')), rest.slice(rest.indexOf('/') + 1)];
        if (kind === 'members') members.add(owner);
        else if (kind === 'reclaim') reclaims.set(owner, kv.value.toString());
        else if (kind === 'owners') {
          try {
            const holder = (JSON.parse(kv.value.toString()) as LockValue).holder;
            locks.set(owner, { holder, rev: String(kv.mod_revision) });
          } catch {
            // a foreign value: leave it alone
          }
        }
      }
      for (const [owner, rev] of [...this.held]) {
        const l = locks.get(owner);
        if (!l || l.rev !== rev) this.lost(owner, l ? `now held by ${l.holder}` : 'lock gone (lease ended)');
      }
      if (this.steppedDown) return;
      for (const [owner, rev] of [...this.releasing]) await this.dropLock(owner, rev);
      for (const owner of [...this.unrouted]) {
        if (!this.held.has(owner)) this.unrouted.delete(owner);
        else await this.writeRoute(owner).then(() => this.unrouted.delete(owner));
      }
      for (const owner of members) {
        if (locks.has(owner) || this.held.has(owner) || this.adopting.has(owner) || owner === this.id)
          continue;
        await this.campaign(owner);
      }
      for (const [owner, leaseId] of reclaims) {
        if (owner === this.id || !this.held.has(owner) || this.adopting.has(owner) || !this.hooks.idle(owner))
          continue;
        await this.handBack(owner, leaseId);
      }
      await this.retireFinished(reclaims);
    } catch (err) {
      log.warn('HA scan failed', { err: err as Error });
    } finally {
      this.scanning = false;
    }
  }

  /**
   * Retires adopted owners whose transactions have all been finished for `retireAfterMs` (looked at every tenth
   * of it, at most every 30 s); one asking for its transactions back is handed them instead.
   */
  private async retireFinished(reclaims: ReadonlyMap<string, string>): Promise<void> {
    const now = Date.now();
    if (now < this.nextRetireCheckMs) return;
    const every = Math.min(30_000, Math.max(this.config.scanIntervalMs, this.config.retireAfterMs / 10));
    this.nextRetireCheckMs = now + every;
    for (const owner of [...this.held.keys()]) {
      if (owner === this.id || this.adopting.has(owner) || reclaims.has(owner)) continue;
      if (!(await this.hooks.finished(owner))) {
        this.finishedSince.delete(owner);
        continue;
      }
      const since = this.finishedSince.get(owner) ?? now;
      this.finishedSince.set(owner, since);
      if (now - since >= this.config.retireAfterMs) await this.retire(owner);
    }
  }

  /** Stops answering for `owner` and deletes its member key, lock and route: nobody takes it over again. */
  private async retire(owner: string): Promise<void> {
    const rev = this.held.get(owner);
    if (!rev || this.stopped || this.steppedDown) return;
    // Keys first: if etcd does not take it, the owner stays held (and answered for) and the next round tries
    // again; once they are gone, its manager (idle, its log empty) can write nothing: the fence would refuse it.
    if (!(await this.deleteOwnerKeys(owner, rev))) {
      this.lost(owner, 'lock changed before it could be retired');
      return;
    }
    this.held.delete(owner);
    this.finishedSince.delete(owner);
    await this.hooks.release(owner);
    log.info('retired a taken-over coordinator id: all its transactions long finished', { owner });
    this.emit('retired', owner);
  }

  /** Deletes owner's lock, route and member key while the lock is still the one held (`rev`): retirement. */
  private async deleteOwnerKeys(owner: string, rev: string): Promise<boolean> {
    const res = await this.kv({
      compare: [this.lockIs(owner, rev)],
      success: [
        this.del(haKeys.lock(this.prefix, owner)),
        this.del(haKeys.route(this.prefix, owner)),
        this.del(haKeys.member(this.prefix, owner)),
      ],
      failure: [],
    });
    return res.succeeded;
  }

  private async campaign(owner: string): Promise<void> {
    const holder = await this.tryAcquire(owner, false);
    if (holder !== this.id) return;
    log.info('won the orphaned transactions of a failed coordinator', { owner });
    this.adopting.add(owner);
    try {
      await this.hooks.adopt(owner, this.fence(owner));
      this.emit('adopted', owner);
    } catch (err) {
      log.error('adoption failed; releasing the lock', { owner, err: err as Error });
      await this.release(owner).catch(() => undefined);
    } finally {
      this.adopting.delete(owner);
    }
  }

  /**
   * Hands owner's lock to its restarted coordinator directly (put under the lease it named in its reclaim key),
   * so no survivor can campaign for it in between; the owner then re-takes it as "its own" lock.
   */
  private async handBack(owner: string, leaseId: string): Promise<void> {
    const rev = this.held.get(owner);
    if (!rev) return;
    log.info('handing transactions back to their restarted owner', { owner });
    await this.hooks.release(owner);
    this.held.delete(owner);
    this.forgetOwner(owner); // taken over again later, it is judged afresh (not retired at once)
    try {
      await this.kv({
        compare: [this.lockIs(owner, rev)],
        success: [
          {
            request_put: {
              key: Buffer.from(haKeys.lock(this.prefix, owner)),
              value: Buffer.from(JSON.stringify({ holder: owner } satisfies LockValue)),
              lease: leaseId,
            },
          },
          this.del(haKeys.route(this.prefix, owner)),
        ],
        failure: [],
      });
    } catch (err) {
      // Its lease is gone (it died again): drop the lock so the next scan re-adopts the owner.
      log.warn('hand-back failed; releasing the lock', { owner, err: err as Error });
      this.held.set(owner, rev);
      await this.release(owner);
    }
    this.emit('released', owner);
  }

  /** Stops answering for `owner` and deletes its lock and route (at the next scans if etcd does not answer). */
  private async release(owner: string): Promise<void> {
    const rev = this.held.get(owner);
    this.held.delete(owner);
    this.forgetOwner(owner);
    if (!rev) return;
    this.releasing.set(owner, rev);
    await this.dropLock(owner, rev);
  }

  /**
   * Deletes a lock given up (and its route) if it is still the one this member took. Until that is done the
   * lock stands on this member's live lease: nobody would campaign for the owner, nor would this member serve it.
   */
  private async dropLock(owner: string, rev: string): Promise<void> {
    try {
      await this.kv({
        compare: [this.lockIs(owner, rev)],
        success: [this.del(haKeys.lock(this.prefix, owner)), this.del(haKeys.route(this.prefix, owner))],
        failure: [],
      });
      this.releasing.delete(owner); // deleted, or no longer the one taken: nothing left to do either way
    } catch (err) {
      log.warn('could not release a lock; trying again at the next scan', { owner, err: err as Error });
    }
  }

  /** What this member remembered about an owner it no longer holds. */
  private forgetOwner(owner: string): void {
    this.finishedSince.delete(owner);
    this.unrouted.delete(owner);
  }
}
