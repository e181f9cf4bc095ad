/**
 * The server helper: serves one or more gRPC services whose handlers are plain async functions of an
 * `IncomingCall`, runs them inside the server middleware chain, maps thrown errors with `toStatus`, registers the
 * instance in the registry, and stops in the safe order — deregister, wait for clients to see it, drain, shut down.
 *
 * Every server also serves the multiplexed call path (`mux/`, `dmtp.v1.Mux`) from the same method table and middleware,
 * and advertises it in the registry (`mux: '1'`), so DMTP clients take the fast path and any other gRPC client
 * still calls the ordinary unary methods. `mux: false` turns it off.
 *
 * Every server also answers the standard gRPC health protocol (health.ts) for "" and each service name:
 * SERVING once bound, NOT_SERVING from the first step of stop(). `health: false` turns it off.
 */
import {
  Metadata,
  Server,
  ServerCredentials,
  status as Status,
  type MethodDefinition,
  type sendUnaryData,
  type ServerUnaryCall,
  type ServiceDefinition,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { setTimeout as sleep } from 'node:timers/promises';
import { FailedPreconditionError, InvalidArgumentError } from '../common/errors';
import { logger } from '../common/log';
import type { InstanceSpec, InstanceUpdate, Registration, Registry } from '../registry/types';
import { bindCallContext } from './call-context';
import { HealthReporter, HealthService } from './health';
import { assertDecoded, tolerantDecoders } from './malformed';
import { ANSWERED_TRAILER, NOT_RUN_TRAILER, serverStatus } from './not-sent';
import { CallAdmission } from './admission';
import { createMuxService, muxServiceDefinition, type MuxServiceImpl, type MuxServiceOptions } from './mux';
import {
  invokeHandler,
  responseBytes,
  type IncomingCall,
  type MethodEntry,
  type MethodLookup,
  type ResponseSlot,
  type ServerMiddleware,
  type UnaryHandler,
} from './middleware';
import { MAX_MESSAGE_BYTES } from './transport';
import { serverCredentials, type TlsOptions } from './tls';

const log = logger('rpc:server');
/** Health routing: pause before registering again after a failed attempt. */
const ROUTE_RETRY_MS = 2_000;
/** `metadata.health` of a registration health routing parked. */
const PARKED = 'NOT_SERVING';

export const DEFAULTS = {
  /** Interface to bind. */
  host: '127.0.0.1',
  /** Port to bind (0 = any free port). */
  port: 0,
  /** Time between deregistering and starting to drain, so clients' registry views drop this instance first. */
  drainDelayMs: 250,
  /** Time in-flight calls get to finish once draining starts, before the server is forced down. */
  gracePeriodMs: 5_000,
  /** Handlers run at once over both call paths; more are refused unrun (RESOURCE_EXHAUSTED). No limit by default. */
  maxConcurrentCalls: Infinity,
};

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyMethod = MethodDefinition<any, any>;
export type ServiceDefinitionLike = Record<string, AnyMethod>;

export type RequestOf<M> = M extends { requestSerialize: (value: infer Req) => Buffer } ? Req : never;
export type ResponseOf<M> = M extends { responseDeserialize: (bytes: Buffer) => infer Res } ? Res : never;

/** A plain async handler for every method of a service definition. */
export type Handlers<Def extends ServiceDefinitionLike> = {
  [K in keyof Def]: UnaryHandler<RequestOf<Def[K]>, ResponseOf<Def[K]>>;
};

export interface ServiceBinding<Def extends ServiceDefinitionLike = ServiceDefinitionLike> {
  /** Registry name the service is found under, e.g. "inventory". */
  name: string;
  /** grpc-js service definition (e.g. a generated `ParticipantService`). Unary methods only. */
  definition: Def;
  handlers: Handlers<Def>;
  /**
   * Its methods run even when the server is at `maxConcurrentCalls` (counted all the same): for services that
   * finish work already admitted, e.g. `participantBinding`'s Prepare / Commit / Rollback.
   */
  unlimited?: boolean;
}

export interface ServerOptions {
  services: ServiceBinding[];
  /** Where to register; without one the server only serves (tests, static setups). */
  registry?: Registry;
  /** What the registered instance says about itself beyond service and address. */
  instance?: Omit<InstanceSpec, 'service' | 'address'>;
  /** Server middleware, outermost first; `bindCallContext` always runs before them. */
  middleware?: ServerMiddleware[];
  /**
   * Handlers this server runs at once, over both call paths and all connections (default Infinity: no limit). A
   * call beyond it is refused at once with RESOURCE_EXHAUSTED, marked as not run, and a DMTP client sends it to
   * another instance (within its retry budget). See admission.ts.
   */
  maxConcurrentCalls?: number;
  /** Serve the multiplexed call path beside the unary methods, and advertise it (default true). */
  mux?: boolean | MuxServiceOptions;
  /** Serve the gRPC health protocol (grpc.health.v1.Health) for "" and every service name (default true). */
  health?: boolean;
  /**
   * With a `registry`: a service name the application reports NOT_SERVING (`server.health.set(name, …)`, or "" for
   * the whole server) is registered with weight 0 and `metadata.health = 'NOT_SERVING'` until it is SERVING
   * again (then with the weight it had before), so DMTP clients stop sending it calls it would fail while it
   * stays listed (default true). See `parkWhileNotServing`.
   */
  healthRouting?: boolean;
  host?: string;
  port?: number;
  drainDelayMs?: number;
  gracePeriodMs?: number;
  /** Serve over TLS (default plaintext); with `requireClientCert`, mutual TLS. */
  tls?: TlsOptions;
}

type State = 'new' | 'serving' | 'stopping' | 'stopped';

export class RpcServer {
  /** Every method served, by full path. */
  readonly methods = new Map<string, MethodEntry>();
  /** The chain every call runs through, on either transport. */
  readonly middleware: ServerMiddleware[];
  readonly lookup: MethodLookup = (path) => this.methods.get(path);
  private readonly grpc = new Server({ 'grpc.max_receive_message_length': MAX_MESSAGE_BYTES });
  private readonly config: Required<Pick<ServerOptions, 'host' | 'port' | 'drainDelayMs' | 'gracePeriodMs'>>;
  private registrations: Registration[] = [];
  /** The weight a service name's registration had when health routing parked it (given back once SERVING). */
  private readonly weightBefore = new Map<string, number>();
  /** Names whose last health-routing update failed: the registration holds a value etcd may not (retried). */
  private readonly unwritten = new Set<string>();
  private state: State = 'new';
  private starting?: Promise<this>;
  private stopping?: Promise<void>;
  private stopRequested = false;
  private boundPort = 0;
  private readonly credentials: ServerCredentials;
  private inFlight = 0;
  /** `maxConcurrentCalls`, over both paths. */
  readonly admission: CallAdmission;
  private readonly mux: MuxServiceImpl | undefined;
  /**
   * The statuses the health protocol answers ("" and every service name; NOT_SERVING until start, and from the
   * first step of stop). An application may report its own: `server.health.set('inventory', 'NOT_SERVING')`.
   */
  readonly health = new HealthReporter();
  /** The names this server reports itself ("" and its services); none with `health: false`. */
  private healthNames: string[] = [];
  /** Health routing: the reconciliation running, whether another is due after it, its retry timer. */
  private routing?: Promise<void>;
  private routeAgain = false;
  private routeRetry?: NodeJS.Timeout;
  private stopRouting?: () => void;

  constructor(private readonly options: ServerOptions) {
    this.config = {
      host: options.host ?? DEFAULTS.host,
      port: options.port ?? DEFAULTS.port,
      drainDelayMs: options.drainDelayMs ?? DEFAULTS.drainDelayMs,
      gracePeriodMs: options.gracePeriodMs ?? DEFAULTS.gracePeriodMs,
    };
    this.middleware = [bindCallContext, ...(options.middleware ?? [])];
    const limit = options.maxConcurrentCalls ?? DEFAULTS.maxConcurrentCalls;
    if (limit !== Infinity && !(Number.isInteger(limit) && limit >= 1)) {
      throw new InvalidArgumentError(
        `maxConcurrentCalls must be a whole number ≥ 1 or Infinity (got ${String(limit)})`,
      );
    }
    this.admission = new CallAdmission(limit);
    // Health routing writes and removes `metadata.health` itself: an application's value would be lost, or read
    // as "parked" (and its weight given back) at the first reconciliation.
    const routing = options.registry && options.health !== false && options.healthRouting !== false;
    if (routing && options.instance?.metadata?.health !== undefined) {
      throw new InvalidArgumentError(
        "instance.metadata.health is health routing's own (it parks a NOT_SERVING service there): " +
          'use another key, or healthRouting: false',
        { details: { instanceId: options.instance.instanceId ?? '' } },
      );
    }
    this.credentials = serverCredentials('server', options.tls);
    for (const s of options.services) this.addService(s);
    if (options.mux !== false) {
      const muxOptions = typeof options.mux === 'object' ? options.mux : {};
      this.mux = createMuxService(this.lookup, this.middleware, muxOptions, this.admission);
      this.grpc.addService(muxServiceDefinition, this.mux);
    }
    if (options.health !== false) {
      this.healthNames = ['', ...this.serviceNames()];
      for (const name of this.healthNames) this.health.set(name, 'NOT_SERVING');
      this.grpc.addService(HealthService, this.health.implementation());
    }
  }

  /** host:port served (after start). */
  get address(): string {
    return `${this.config.host}:${this.boundPort}`;
  }

  get port(): number {
    return this.boundPort;
  }

  /** Calls being handled on the unary path now. */
  get activeCalls(): number {
    return this.inFlight;
  }

  /** The live registrations (one per distinct service name). */
  get registered(): readonly Registration[] {
    return this.registrations;
  }

  /**
   * Binds, reports SERVING and registers. When a step fails (the port is taken, etcd does not answer, the instance
   * id is registered already) what was done is undone — registrations removed, the port closed — and the error is
   * thrown. A stop() meanwhile ends the start the same way (it rejects).
   */
  start(): Promise<this> {
    if (this.state !== 'new') throw new InvalidArgumentError(`server already ${this.state}`);
    this.state = 'serving';
    this.starting = this.startUp();
    return this.starting;
  }

  private async startUp(): Promise<this> {
    const stillStarting = () => {
      if (this.stopRequested) throw new FailedPreconditionError('the server was stopped while starting');
    };
    try {
      this.boundPort = await new Promise<number>((resolve, reject) =>
        this.grpc.bindAsync(`${this.config.host}:${this.config.port}`, this.credentials, (err, port) =>
          err ? reject(err) : resolve(port),
        ),
      );
      stillStarting();
      for (const name of this.healthNames) this.health.set(name, 'SERVING');
      const { registry } = this.options;
      if (registry) {
        for (const service of this.serviceNames()) {
          this.registrations.push(await registry.register(this.registrationSpec(service)));
          stillStarting();
        }
        if (this.options.health !== false && this.options.healthRouting !== false) {
          this.stopRouting = this.health.onChange(() => this.route());
          this.route(); // a status the application set while the names were being registered
        }
      }
    } catch (err) {
      this.state = 'stopping';
      this.health.setAll('NOT_SERVING');
      const regs = this.registrations;
      this.registrations = [];
      await Promise.all(regs.map((r) => r.deregister().catch(() => undefined)));
      this.health.endWatches();
      this.grpc.forceShutdown();
      this.state = 'stopped';
      throw err;
    }
    log.info('serving', {
      address: this.address,
      services: this.options.services.map((s) => s.name),
      ...this.config,
    });
    return this;
  }

  /** Deregisters, waits `drainDelayMs`, lets in-flight calls finish for `gracePeriodMs`, then shuts down. */
  stop(): Promise<void> {
    // Every caller waits for the same stop (a second one resolving early would let a caller exit mid-drain).
    this.stopping ??= this.stopOnce();
    return this.stopping;
  }

  private async stopOnce(): Promise<void> {
    // A start still running sees the request at its next step and undoes what it did; one that had finished is
    // stopped as usual below.
    this.stopRequested = true;
    await this.starting?.catch(() => undefined);
    if (this.state === 'stopped') return;
    const wasServing = this.state === 'serving';
    this.state = 'stopping';
    // Health routing stops here; an update still under way lands before the deregistration below, or fails.
    this.stopRouting?.();
    clearTimeout(this.routeRetry);
    this.health.setAll('NOT_SERVING'); // probers stop sending work before the instance leaves the registry
    const regs = this.registrations;
    this.registrations = [];
    await Promise.all(
      regs.map((r) =>
        r.deregister().catch((err) => log.warn('deregister failed', { err, address: this.address })),
      ),
    );
    if (wasServing && regs.length > 0 && this.config.drainDelayMs > 0) await sleep(this.config.drainDelayMs);
    await new Promise<void>((resolve) => {
      const force = setTimeout(() => {
        log.warn('grace period over: forcing shutdown', { address: this.address, inFlight: this.inFlight });
        this.grpc.forceShutdown();
        resolve();
      }, this.config.gracePeriodMs);
      // The multiplexed streams are long-lived: drain them (in-flight calls finish, streams end) or
      // tryShutdown would wait for them until the grace period forced it.
      this.health.endWatches();
      const streamsDone = this.mux ? this.mux.drain() : Promise.resolve();
      void streamsDone.then(() =>
        this.grpc.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        }),
      );
    });
    this.state = 'stopped';
  }

  /** Stops at once, without deregistering or draining (tests of crashes use a child process instead). */
  forceStop(): void {
    this.state = 'stopped';
    this.health.setAll('NOT_SERVING');
    this.health.endWatches();
    this.grpc.forceShutdown();
  }

  private serviceNames(): string[] {
    return [...new Set(this.options.services.map((s) => s.name))];
  }

  private registrationSpec(service: string): InstanceSpec {
    const metadata = { ...this.options.instance?.metadata, ...(this.mux ? { mux: '1' } : {}) };
    return { ...this.options.instance, service, address: this.address, metadata };
  }

  /**
   * What a registration says once parked (weight 0, the reason in its metadata) or back: its weight before it was
   * parked, unless changed since (`registered[i].update()` by the application), and its metadata as it is now
   * without the mark. So a weight or metadata the application set survives a park.
   */
  private routedValue(reg: Registration, serving: boolean): InstanceUpdate {
    const { service, weight, metadata } = reg.instance;
    if (!serving) return { weight: 0, metadata: { ...metadata, health: PARKED } };
    const { health: _mark, ...own } = metadata;
    const before = this.weightBefore.get(service) ?? this.options.instance?.weight ?? 1;
    return { weight: weight === 0 ? before : weight, metadata: own };
  }

  /** A status changed: brings the registrations in line with it, one reconciliation at a time. */
  private route(): void {
    if (this.state !== 'serving') return;
    if (this.routing) {
      this.routeAgain = true;
      return;
    }
    clearTimeout(this.routeRetry);
    this.routing = this.parkWhileNotServing().finally(() => {
      this.routing = undefined;
      if (this.routeAgain) {
        this.routeAgain = false;
        this.route();
      }
    });
  }

  /**
   * Health routing: a service name's registration is parked — weight 0, `metadata.health = 'NOT_SERVING'` — while
   * it or "" is NOT_SERVING (it stays listed — `dmtp services`, `branch list --service` — but no DMTP client sends
   * it a call: `takesCalls`), and given back its own weight and metadata once both are not (`routedValue`).
   * Idempotent, so flapping statuses cost one reconciliation after another, never a lost change. An update that
   * fails (etcd down) is tried again every `ROUTE_RETRY_MS`.
   */
  private async parkWhileNotServing(): Promise<void> {
    const whole = this.health.get('') !== 'NOT_SERVING';
    for (const reg of this.registrations) {
      if (this.state !== 'serving') return;
      const { service } = reg.instance;
      const serving = whole && this.health.get(service) !== 'NOT_SERVING';
      // The registration's own value says whether it is parked: it holds the last update even when etcd did not
      // take it (then `unwritten`, and written again here, whichever way the status went meanwhile).
      const parked = reg.instance.metadata.health === PARKED;
      if (serving !== parked && !this.unwritten.has(service)) continue;
      if (!serving && !parked) this.weightBefore.set(service, reg.instance.weight);
      try {
        await reg.update(this.routedValue(reg, serving));
      } catch (err) {
        if (this.state !== 'serving') return; // stopped meanwhile: deregistered
        this.unwritten.add(service);
        log.warn('could not update the registration; retrying', { err, service, address: this.address });
        this.routeRetry = setTimeout(() => this.route(), ROUTE_RETRY_MS);
        return;
      }
      this.unwritten.delete(service);
      if (serving) this.weightBefore.delete(service);
      const fields = { service, address: this.address };
      if (serving) log.info('SERVING again: takes calls again', fields);
      else log.info('reported NOT_SERVING: registered with weight 0 until SERVING again', fields);
    }
  }

  private addService(binding: ServiceBinding): void {
    const impl: UntypedServiceImplementation = {};
    for (const [name, def] of Object.entries(binding.definition)) {
      if (def.requestStream || def.responseStream) {
        throw new InvalidArgumentError(`${def.path}: only unary methods are served`, {
          details: { method: def.path },
        });
      }
      const handler = binding.handlers[name];
      if (typeof handler !== 'function') {
        throw new InvalidArgumentError(`no handler for ${def.path}`, { details: { method: def.path } });
      }
      const entry: MethodEntry = {
        path: def.path,
        deserialize: def.requestDeserialize,
        serialize: def.responseSerialize,
        handler: handler as UnaryHandler,
        ...(binding.unlimited ? { unlimited: true } : {}),
      };
      this.methods.set(def.path, entry);
      impl[name] = (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) =>
        this.handleUnary(entry, call, callback);
    }
    this.grpc.addService(encodedResponses(tolerantDecoders(binding.definition)), impl);
  }

  private handleUnary(
    entry: MethodEntry,
    call: ServerUnaryCall<unknown, unknown>,
    callback: sendUnaryData<unknown>,
  ): void {
    // Refused before anything is made for the call (nor does any middleware see it).
    const refused = this.admission.enter(entry.unlimited, entry.path);
    if (refused) {
      const trailers = new Metadata();
      trailers.set(ANSWERED_TRAILER, '1');
      trailers.set(NOT_RUN_TRAILER, '1');
      callback({ code: refused.code, details: refused.message, metadata: trailers });
      return;
    }
    const abort = new AbortController();
    const deadline = call.getDeadline();
    // The call is its own ResponseSlot: the chain leaves the encoded response on it (no allocation of its own).
    const incoming: IncomingCall & ResponseSlot = {
      method: entry.path,
      request: call.request,
      metadata: call.metadata,
      deadline: typeof deadline === 'number' ? deadline : deadline.getTime(),
      trailers: new Metadata(),
      signal: abort.signal,
      peer: call.getPeer(),
      encodedResponse: undefined,
      encodedBytes: undefined,
      maxResponseBytes: Infinity,
    };
    call.once('cancelled', () => abort.abort());
    this.inFlight++;
    const fail = (err: unknown) => {
      this.inFlight--;
      const { code, details } = serverStatus(err);
      if (code === Status.INTERNAL) log.warn('handler failed', { method: entry.path, err });
      incoming.trailers.set(ANSWERED_TRAILER, '1');
      callback({ code, details, metadata: incoming.trailers });
    };
    Promise.resolve()
      .then(() => {
        assertDecoded(entry.path, call.request);
        return invokeHandler(entry, incoming, this.middleware, incoming);
      })
      .then(
        (res) => {
          this.admission.leave();
          let bytes: Buffer;
          try {
            bytes = responseBytes(entry, incoming, res);
          } catch (err) {
            fail(err); // a middleware answered a response of its own, and it cannot be encoded
            return;
          }
          this.inFlight--;
          callback(null, bytes, incoming.trailers);
        },
        (err: unknown) => {
          this.admission.leave();
          fail(err);
        },
      );
  }
}

/**
 * The service definition grpc-js serves, answering with the bytes `invokeHandler` encoded inside the middleware
 * chain (handleUnary passes those): grpc-js's own encoding came after the chain, so a response that could not be
 * encoded failed the call where no middleware saw it, and a transaction kept the call's work.
 */
function encodedResponses<D extends ServiceDefinition>(definition: D): D {
  return Object.fromEntries(
    Object.entries(definition).map(([name, m]) => [name, { ...m, responseSerialize: (b: Buffer) => b }]),
  ) as D;
}

/** Starts a server (bind, then register) and returns it. */
export function startServer(options: ServerOptions): Promise<RpcServer> {
  return new RpcServer(options).start();
}
