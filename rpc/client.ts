/**
 * The client helper: `client(registry, 'inventory', InventoryService)` gives typed async methods whose calls go
 * to an instance picked per call, by a strategy, from the registry's live view of the service.
 *
 * The client keeps one transport per live instance (the multiplexed stream where the instance advertises it,
 * unary otherwise; `transportFactory` may hand out the multiplexed one), updated on every registry event — or,
 * with `subsetSize`, per instance of its subset only (`subset.ts`), chosen again after each burst of changes.
 * Every call has a deadline (nested calls inherit what is left); calls that certainly never reached a server, and
 * idempotent calls that failed in transit, are retried on another instance within a retry budget; instances that
 * keep failing are ejected for a while.
 */
import { Metadata, status as Status } from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { backoffMs, type BackoffOptions } from '../common/backoff';
import { MAX_TIMER_MS } from '../common/clock';
import {
  DeadlineExceededError,
  DmtpError,
  InternalError,
  InvalidArgumentError,
  UnavailableError,
} from '../common/errors';
import { logger } from '../common/log';
import { takesCalls } from '../registry/service-view';
import type { ChangeEvent, Registry, ServiceInstance } from '../registry/types';
import { inheritedDeadline, inheritedSignal } from './call-context';
import { composeClient, type CallResult, type ClientMiddleware, type OutgoingCall } from './middleware';
import { OutlierDetector } from './outlier-ejection';
import { RetryBudget } from './retry-budget';
import type { AnyMethod, RequestOf, ResponseOf, ServiceDefinitionLike } from './server';
import { resolveStrategy, type Provider, type SelectContext, type Strategy } from './strategies';
import { withTrailers, type Transport, type TransportResult } from './transport';
import { UnaryTransport } from './transport-unary';
import { MUX_METADATA_KEY, MUX_METADATA_VALUE, MuxTransport } from './mux';
import { answeredByServer } from './not-sent';
import { compileClientOptions, DEFAULTS, type ClientOptions } from './client-options';
import { checkTls, type TlsOptions } from './tls';
import { SubsetChooser } from './subset';

const log = logger('rpc:client');

export { DEFAULTS, type ClientOptions } from './client-options';

export interface CallOptions {
  /** Deadline relative to now (ms); capped by the deadline inherited from the call being served. */
  timeoutMs?: number;
  /** Absolute deadline (ms since the epoch); wins over `timeoutMs`. */
  deadline?: number;
  /** Safe to retry after the request may have reached a server. */
  idempotent?: boolean;
  /** Key for the consistent-hash strategy. */
  key?: string;
  metadata?: Metadata;
  signal?: AbortSignal;
}

export type ServiceMethods<Def extends ServiceDefinitionLike> = {
  [K in keyof Def]: (request: RequestOf<Def[K]>, options?: CallOptions) => Promise<ResponseOf<Def[K]>>;
};

/** A live instance with its transport, as the strategies see it. */
class Member implements Provider {
  removed = false;
  /** The backstop that closes a removed member's transport if its calls never settle. */
  closeTimer?: NodeJS.Timeout;
  constructor(
    public instance: ServiceInstance,
    public transport: Transport,
  ) {}
  get inFlight(): number {
    return this.transport.inFlight;
  }
}

/**
 * The fast path where the instance advertises it (`mux: '1'`), with a unary transport beside it for large
 * payloads; plain unary otherwise (e.g. a non-DMTP gRPC server registered by hand).
 */
export function defaultTransport(instance: ServiceInstance, tls?: TlsOptions): Transport {
  const unary = new UnaryTransport(instance.address, { tls });
  if (instance.metadata[MUX_METADATA_KEY] === MUX_METADATA_VALUE) {
    return new MuxTransport({ address: instance.address, fallback: unary, tls });
  }
  return unary;
}

export class ServiceClient<Def extends ServiceDefinitionLike> {
  private readonly strategy: Strategy;
  private readonly budget: RetryBudget;
  private readonly outliers: OutlierDetector;
  private readonly middleware: ClientMiddleware[];
  private readonly transportFactory: (instance: ServiceInstance) => Transport;
  private readonly byId = new Map<string, Member>();
  /** Removed members whose transports still carry calls; closed as those settle, or by close(). */
  private readonly retiring = new Set<Member>();
  /**
   * Immutable snapshot (like a grpc-js picker), dropped on every change and made again by the next call that
   * needs it: a burst of changes (a thousand leases ending at once) costs one copy, not one per change.
   */
  private snap: readonly Member[] | undefined = [];
  private readonly unwatch: () => void;
  private firstRead: Promise<void>;
  private firstReadDone = false;
  /** The last first read failed: the next call reads again. */
  private firstReadFailed = false;
  private closed = false;
  private readonly timeoutMs: number;
  private readonly maxAttempts: number;
  private readonly retryBackoff: BackoffOptions;
  /** With `subsetSize`: how the subset is chosen, and every instance of the service it is chosen from. */
  private readonly subset?: SubsetChooser;
  private readonly known = new Map<string, ServiceInstance>();
  /** A change came since the subset was last chosen: chosen again before the next pick, or on the next turn. */
  private subsetStale?: NodeJS.Immediate;
  /** When the first ejection of a subset member ends (0: none ejected): the subset is chosen again then. */
  private subsetRecheckAt = 0;

  constructor(
    readonly registry: Registry,
    readonly service: string,
    readonly definition: Def,
    private readonly options: ClientOptions = {},
  ) {
    const compiled = compileClientOptions(service, options); // first: nothing to undo when it throws
    this.strategy = resolveStrategy(options.strategy ?? DEFAULTS.strategy);
    this.budget = new RetryBudget(compiled.retryBudget);
    this.outliers = new OutlierDetector(compiled.outlierEjection);
    this.middleware = options.middleware ?? [];
    if (options.tls) checkTls(`client of ${service}`, options.tls);
    this.transportFactory = options.transportFactory ?? ((i) => defaultTransport(i, options.tls));
    this.timeoutMs = compiled.timeoutMs;
    this.maxAttempts = compiled.maxAttempts;
    this.retryBackoff = compiled.retryBackoff;
    if (compiled.subsetSize !== Infinity) {
      const key = options.subsetKey ?? randomBytes(8).toString('hex');
      this.subset = new SubsetChooser(compiled.subsetSize, key, options.zone);
    }
    this.unwatch = registry.watch(service, (ev) => this.onChange(ev));
    this.firstRead = this.readRegistry();
  }

  /** Reads the service's instances; until one read succeeds, each call after a failed one reads again. */
  private readRegistry(): Promise<void> {
    this.firstReadFailed = false;
    const read = this.registry.instances(this.service).then(
      (list) => {
        for (const instance of list)
          if (!this.byId.has(instance.instanceId) && !this.known.has(instance.instanceId))
            this.onChange({ type: 'add', instance });
        this.firstReadDone = true;
      },
      (err) => {
        log.warn('registry read failed', { service: this.service, err });
        this.firstReadFailed = true;
        throw err;
      },
    );
    read.catch(() => undefined); // surfaced to the calls that await it
    return read;
  }

  /** Resolves once the registry's first read of the service is in. */
  ready(): Promise<void> {
    return this.firstRead;
  }

  /** The instances calls may go to now (with `subsetSize`, those of the subset). */
  instances(): ServiceInstance[] {
    return this.members.map((m) => m.instance);
  }

  /** Calls one method and returns the response with its trailers and the instance that answered. */
  call<K extends keyof Def & string>(
    method: K,
    request: RequestOf<Def[K]>,
    options: CallOptions = {},
  ): Promise<CallResult<ResponseOf<Def[K]>>> {
    const def = this.definition[method] as AnyMethod | undefined;
    if (!def) {
      return Promise.reject(
        new InvalidArgumentError(`${this.service} has no method '${method}'`, {
          details: { service: this.service, method },
        }),
      );
    }
    const now = Date.now();
    const own = options.deadline ?? now + (options.timeoutMs ?? this.timeoutMs);
    // NaN (a timeout read from an unset variable) would pass every deadline check and wait for good.
    if (Number.isNaN(own)) {
      return Promise.reject(
        new InvalidArgumentError(
          `${def.path}: the call's deadline or timeoutMs is NaN: give a number of ms`,
          {
            details: { service: this.service, method: def.path },
          },
        ),
      );
    }
    const outgoing: OutgoingCall = {
      service: this.service,
      method: def.path,
      request,
      metadata: options.metadata ?? new Metadata(),
      deadline: Math.min(own, inheritedDeadline()),
      idempotent: options.idempotent ?? false,
      key: options.key,
    };
    const signal = inheritedSignal(options.signal);
    const last = (c: OutgoingCall) => this.invoke(def, c, signal);
    const p = this.middleware.length === 0 ? last(outgoing) : composeClient(this.middleware, outgoing, last);
    return p as Promise<CallResult<ResponseOf<Def[K]>>>;
  }

  /** Stops following the registry and closes every transport (calls in flight fail with UNAVAILABLE). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.unwatch();
    clearImmediate(this.subsetStale);
    for (const m of this.byId.values()) m.transport.close();
    this.byId.clear();
    for (const m of this.retiring) this.release(m);
    this.snap = [];
  }

  private async invoke(def: AnyMethod, call: OutgoingCall, signal?: AbortSignal): Promise<CallResult> {
    if (this.closed)
      throw new UnavailableError(`client of ${this.service} is closed`, { details: this.ids(call) });
    if (!this.firstReadDone) {
      if (this.firstReadFailed) this.firstRead = this.readRegistry();
      await this.awaitFirstRead(call);
    }
    const request = def.requestSerialize(call.request) as Buffer;
    this.budget.onCall();
    const ctx: SelectContext = { method: call.method, key: call.key, zone: this.options.zone };
    const tried = new Set<string>();
    for (let attempt = 1; ; attempt++) {
      if (Date.now() >= call.deadline) {
        throw new DeadlineExceededError(`deadline exceeded before calling ${call.method}`, {
          details: this.ids(call),
        });
      }
      const member = this.pick(ctx, tried);
      if (!member) {
        const followed = this.subset
          ? [...this.known.values()]
          : [...this.byId.values()].map((m) => m.instance);
        const parked = followed.filter((i) => !takesCalls(i)).length;
        const why = parked > 0 ? ` (${parked} registered with weight 0 take no calls)` : '';
        throw new UnavailableError(`no live instance of service '${this.service}'${why}`, {
          details: { ...this.ids(call), notSent: true },
        });
      }
      const id = member.instance.instanceId;
      tried.add(id);
      let res: TransportResult;
      try {
        res = await member.transport.invoke({
          method: call.method,
          request,
          metadata: call.metadata,
          deadline: call.deadline,
          signal,
        });
      } catch (err) {
        const e = err instanceof DmtpError ? err : new UnavailableError(String(err), { cause: err });
        // An UNAVAILABLE the instance answered itself (a handler passing on its own onward call's failure) says
        // nothing of its health: counted as a failure, every instance of a service in front of a dead one would
        // be ejected in turn. Only one it could not answer (no connection, a broken stream) counts.
        if (e.code === Status.UNAVAILABLE && !answeredByServer(e)) {
          if (this.outliers.onFailure(id)) {
            log.info('instance ejected', { service: this.service, instanceId: id });
            // The next-ranked instance stands in for it while it is out.
            if (this.subset) this.subsetStale ??= setImmediate(() => this.chooseSubset());
          }
        } else if (e.code !== Status.CANCELLED && e.code !== Status.DEADLINE_EXCEEDED) {
          this.outliers.onSuccess(id); // it answered: alive
        }
        e.details.service ??= this.service;
        e.details.instanceId ??= id;
        if (!this.mayRetry(e, call, attempt, signal)) throw e;
        const pause = backoffMs(attempt, this.retryBackoff);
        if (Date.now() + pause >= call.deadline) throw e;
        if (pause > 0) await sleep(pause);
        continue;
      } finally {
        if (member.removed && member.transport.inFlight === 0) this.release(member);
      }
      this.outliers.onSuccess(id); // it answered, whether or not its answer can be read here
      return { response: this.decode(def, call, res, member), trailers: res.trailers, instanceId: id };
    }
  }

  /**
   * The response of a call its instance answered OK. Bytes the method's decoder cannot read (a caller built from
   * another version of the service's .proto, a server answering something else) are a fault of this pair of
   * definitions, not of the instance's health or of the transport: INTERNAL, never retried (the call ran, and
   * running it again elsewhere would meet the same decoder), with the answer's trailers kept on the error.
   *
   * Not marked `answered` (see not-sent.ts): that mark says the server failed the call itself, and the
   * transaction layer reads it as "undone there". This call ran to success at the instance; only its answer was
   * lost here, so it must read as "may have run" (INTERNAL, sent, naming the instance and its address).
   */
  private decode(def: AnyMethod, call: OutgoingCall, res: TransportResult, member: Member): unknown {
    try {
      return def.responseDeserialize(res.response);
    } catch (err) {
      const { instanceId } = member.instance;
      throw withTrailers(
        new InternalError(
          `${this.service} instance ${instanceId} answered ${call.method}, but its response could not be ` +
            `decoded (${String((err as Error)?.message ?? err)}): do the caller's and the server's ` +
            'definitions of the method match?',
          {
            details: {
              ...this.ids(call),
              instanceId,
              address: member.transport.address,
              undecodableResponse: true,
            },
            cause: err,
          },
        ),
        res.trailers,
      );
    }
  }

  private mayRetry(e: DmtpError, call: OutgoingCall, attempt: number, signal?: AbortSignal): boolean {
    if (attempt >= this.maxAttempts || signal?.aborted || this.closed) return false;
    const inTransit = e.code === Status.UNAVAILABLE || e.code === Status.CANCELLED;
    if (e.details.notSent !== true && !(call.idempotent && inTransit)) return false;
    return this.budget.tryRetry();
  }

  private pick(ctx: SelectContext, tried: Set<string>): Member | undefined {
    const all = this.members;
    if (all.length <= 1) return all[0];
    let candidates: readonly Member[] = all;
    if (tried.size > 0 || this.outliers.anyEjected()) {
      const fresh = all.filter((m) => !tried.has(m.instance.instanceId));
      const healthy = fresh.filter((m) => !this.outliers.isEjected(m.instance.instanceId));
      candidates = healthy.length > 0 ? healthy : fresh.length > 0 ? fresh : all;
    }
    return this.strategy.select(candidates, ctx);
  }

  private async awaitFirstRead(call: OutgoingCall): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const wait = call.deadline - Date.now();
    const expired = new Promise<never>((_, reject) => {
      // No deadline (or one further than a Node timer can wait): the registry's own timeouts end the wait.
      if (!(wait <= MAX_TIMER_MS)) return;
      timer = setTimeout(
        () =>
          reject(
            new DeadlineExceededError(
              `deadline exceeded waiting for the registry's view of ${this.service}`,
              {
                details: this.ids(call),
              },
            ),
          ),
        Math.max(0, wait),
      );
    });
    try {
      await Promise.race([this.firstRead, expired]);
    } catch (err) {
      if (err instanceof DeadlineExceededError) throw err;
      throw new UnavailableError(`registry unavailable for service '${this.service}'`, {
        details: { ...this.ids(call), notSent: true },
        cause: err,
      });
    } finally {
      clearTimeout(timer);
    }
  }

  private onChange(ev: ChangeEvent): void {
    if (this.closed) return;
    if (!this.subset) {
      this.follow(ev);
      return;
    }
    if (ev.type === 'remove') this.known.delete(ev.instance.instanceId);
    else this.known.set(ev.instance.instanceId, ev.instance);
    // One choice per burst (a thousand leases ending at once), made at the latest by the next pick.
    this.subsetStale ??= setImmediate(() => this.chooseSubset());
    this.snap = undefined;
  }

  /**
   * Brings the members in line with the subset of the instances known now that take calls; ejected members stay,
   * and the next-ranked instances stand in for them until their ejection ends (the subset is chosen again then).
   */
  private chooseSubset(): void {
    clearImmediate(this.subsetStale);
    this.subsetStale = undefined;
    this.subsetRecheckAt = 0;
    if (this.closed) return;
    const outliers = this.outliers;
    const live = [...this.known.values()].filter(takesCalls);
    const chosen = outliers.anyEjected()
      ? this.subset!.choose(live, (id) => outliers.isEjected(id))
      : this.subset!.choose(live);
    for (const i of chosen) {
      const until = outliers.ejectedUntil(i.instanceId);
      if (until > 0 && (this.subsetRecheckAt === 0 || until < this.subsetRecheckAt))
        this.subsetRecheckAt = until;
    }
    const keep = new Set(chosen.map((i) => i.instanceId));
    for (const m of [...this.byId.values()])
      if (!keep.has(m.instance.instanceId)) this.follow({ type: 'remove', instance: m.instance });
    for (const instance of chosen) this.follow({ type: 'add', instance });
  }

  /** Applies one change to the members: a transport made, replaced (new address or path) or retired. */
  private follow(ev: ChangeEvent): void {
    const { instance } = ev;
    const id = instance.instanceId;
    const current = this.byId.get(id);
    if (ev.type === 'remove') {
      if (!current) return;
      this.byId.delete(id);
      this.outliers.forget(id);
      this.retire(current);
    } else if (!current) {
      this.byId.set(id, new Member(instance, this.transportFactory(instance)));
    } else if (
      current.instance.address !== instance.address ||
      current.instance.metadata.mux !== instance.metadata.mux
    ) {
      this.retire(current);
      this.byId.set(id, new Member(instance, this.transportFactory(instance)));
    } else {
      current.instance = instance;
    }
    this.snap = undefined;
  }

  /** The members calls may go to: those registered with weight 0 are followed but take no calls. */
  private get members(): readonly Member[] {
    if (this.subsetStale || (this.subsetRecheckAt > 0 && this.outliers.now() >= this.subsetRecheckAt))
      this.chooseSubset();
    return (this.snap ??= [...this.byId.values()].filter((m) => takesCalls(m.instance)));
  }

  /** Closes a member's transport once its calls in flight are done (or after `removedCloseAfterMs`). */
  private retire(m: Member): void {
    m.removed = true;
    if (m.transport.inFlight === 0) {
      m.transport.close();
      return;
    }
    this.retiring.add(m);
    m.closeTimer = setTimeout(() => this.release(m), DEFAULTS.removedCloseAfterMs);
  }

  /** Closes a removed member's transport and forgets it (its last call settled, the backstop fired, or close()). */
  private release(m: Member): void {
    clearTimeout(m.closeTimer);
    this.retiring.delete(m);
    m.transport.close();
  }

  private ids(call: OutgoingCall): Record<string, string> {
    return { service: this.service, method: call.method };
  }
}

export type RpcClient<Def extends ServiceDefinitionLike> = ServiceClient<Def> & ServiceMethods<Def>;

const RESERVED = new Set(['call', 'close', 'ready', 'instances', 'registry', 'service', 'definition']);

/** A client of `service` with one typed async method per method of `definition`. */
export function client<Def extends ServiceDefinitionLike>(
  registry: Registry,
  service: string,
  definition: Def,
  options: ClientOptions = {},
): RpcClient<Def> {
  const c = new ServiceClient(registry, service, definition, options);
  for (const name of Object.keys(definition)) {
    if (RESERVED.has(name)) continue; // reachable through call(name, ...)
    Object.defineProperty(c, name, {
      value: (request: unknown, opts?: CallOptions) =>
        c.call(name as keyof Def & string, request as never, opts).then((r) => r.response),
      enumerable: true,
    });
  }
  return c as RpcClient<Def>;
}
