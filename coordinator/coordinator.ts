/**
 * A runnable coordinator: the etcd transaction log, the grpc-js participant gateway, the manager (recovery
 * first) and the gRPC server, started in that order and stopped in reverse. The compiled configuration is
 * logged at start.
 *
 * HA (on with the etcd log unless `ha: false`; see ha.ts): before recovery it takes its ownership lock (waiting
 * while a taker still holds its transactions), fences every log write with it, takes over the transactions
 * of coordinators whose lease ended (one extra manager per failed owner, `takenOver`), and steps down — stops
 * everything and emits 'stepdown' — when it loses its own ownership. With `registry` it registers itself as
 * 'dmtp-coordinator' (instance id = its id) once it serves, and deregisters first on stop.
 */
import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import { Server } from '@grpc/grpc-js';
import { Etcd3 } from 'etcd3';
import {
  FailedPreconditionError,
  InvalidArgumentError,
  logger,
  validateOwnerId,
  type Clock,
} from '../common';
import { EventMetrics, type EventProducer } from '../events';
import type { EventSink, LifecycleSink } from './event-sink';
import { createKafkaProducer, KafkaEventSink, KafkaLifecycleSink } from './event-sink-kafka';
import { Failpoints, parseFailpoint } from './failpoints';
import type { ParticipantGateway } from './gateway';
import { Adoptions } from './adoptions';
import { compileHaOptions, HaMember, ownHealthName, type HaOptions } from './ha';
import { routedBackend } from './ha-router';
import { compileEtcdLogOptions, ETCD_LOG_DEFAULTS, EtcdTxLog, type EtcdTxLogOptions } from './log/etcd-log';
import { FileTxLog, type FileTxLogOptions } from './log/file-log';
import type { TxLog } from './log/tx-log';
import { TransactionManager } from './manager';
import { compileOptions, DEFAULTS, type ManagerOptions } from './options';
import { CoordinatorMetrics } from './metrics';
import { serveMetrics, type MetricsServer } from '../rpc/metrics';
import { traceUnaryService, tracingServerMiddleware } from '../rpc/tracing';
import { GrpcParticipantGateway, registryLocator } from './participant-gateway';
import { coordinatorService, CoordinatorServiceDefinition } from './service';
import { coordinatorMux, muxServiceDefinition } from './mux-service';
import type { MuxServiceImpl } from '../rpc/mux';
import { HealthReporter, HealthService } from '../rpc/health';
import {
  describeEtcdSecurity,
  etcdCallDeadline,
  etcdFaultHandling,
  etcdChannelOptions,
  EtcdRegistry,
  type Registration,
  type Registry,
} from '../registry';
import { serverCredentials, type TlsOptions } from '../rpc/tls';
import type { KafkaClientOptions } from '../events';

/** Registry service the coordinators register under (instance id = coordinator id). */
export const COORDINATOR_SERVICE = 'dmtp-coordinator';
/** What the coordinator reports on the gRPC health protocol: the whole server, and its registry name. */

export interface CoordinatorOptions {
  /** Owner id named in this coordinator's xids and log keys (default `<hostname>-<pid>`, sanitised). */
  id?: string;
  /** Listen host (default 127.0.0.1) and port (default 0 = any free port). */
  host?: string;
  port?: number;
  /** The etcd log (the default): endpoints and key prefix, plus batching knobs. */
  etcd?: Omit<EtcdTxLogOptions, 'client'>;
  /**
   * The file log of a lone, embedded coordinator instead of the etcd one (see log/file-log.ts): durable on this
   * machine's disk, no HA (a file has one owner). etcd is then only needed to register (`registry`).
   */
  file?: Omit<FileTxLogOptions, 'clock'>;
  /** A TxLog to use instead of the etcd one (tests). Not closed by stop(). */
  log?: TxLog;
  /** A gateway to use instead of the grpc-js one (tests). Not closed by stop(). */
  gateway?: ParticipantGateway;
  /** Where committed staged events go (overrides `kafka`). */
  eventSink?: EventSink;
  lifecycleSink?: LifecycleSink;
  /**
   * Kafka through the shared producer of events/: staged events are relayed to it (unless `events: false`: then
   * a Commit with events is refused, as without a sink), and lifecycle notices go to `lifecycleTopic` when set.
   * The producer is owned (started and stopped) by the coordinator.
   */
  kafka?: {
    brokers: string[];
    lifecycleTopic?: string;
    events?: boolean;
    /** TLS to the brokers (kafkajs' `ssl`; see events' KafkaClientOptions). */
    ssl?: KafkaClientOptions['ssl'];
    /** SASL (kafkajs' `sasl`). */
    sasl?: KafkaClientOptions['sasl'];
    /** `false`: the producer never makes the broker create a topic (events' ProducerOptions). Default true. */
    allowAutoTopicCreation?: boolean;
  };
  /** Limits and timings of the manager (DEFAULTS in options.ts). */
  manager?: ManagerOptions;
  /** Fail-point spec `name[:exit|:hang][:N]` (default: DMTP_FAILPOINT). */
  failpoint?: string;
  clock?: Clock;
  /** How long stop() lets calls in flight finish before cancelling them. */
  drainMs?: number;
  /** Serve Prometheus metrics on `http://<metricsHost>:<metricsPort>/metrics` (0 = any free port); off if unset. */
  metricsPort?: number;
  /** Interface of the metrics endpoint (default: `host`). */
  metricsHost?: string;
  /**
   * Register as 'dmtp-coordinator' once serving: a Registry (not closed by stop()), or true for an EtcdRegistry
   * on the log's endpoints and prefix (lease TTL = the HA lease TTL), owned by the coordinator. The registry is
   * also where the participant gateway looks for an instance that is no longer at its branches' address
   * (registered under the branch's service and instance id, as DMTP's rpc server does).
   */
  registry?: Registry | true;
  /** host:port registered for others to call (default: the bound address). */
  advertise?: string;
  /** HA knobs (lease TTL, scan period), or false for a lone coordinator without ownership keys and fencing. */
  ha?: HaOptions | false;
  /**
   * TLS for its gRPC: the server (initiators' and participants' calls; `requireClientCert` for mutual TLS), its
   * calls to participants, and the HA twin probe. Default plaintext. The metrics endpoint stays plain HTTP.
   */
  tls?: TlsOptions;
  /**
   * OpenTelemetry spans (through `@opentelemetry/api`, to the SDK of the process the coordinator runs in): a SERVER
   * span per call it serves (Commit, Rollback, …), child of the caller's (an initiator with `tracing`), and a
   * CLIENT span per Prepare, Commit and Rollback it sends a participant, named with the xid and branch, its context
   * in the call. Default off.
   */
  tracing?: boolean;
}

export type CoordinatorState = 'new' | 'starting' | 'running' | 'stopping' | 'stopped';

const log = logger('coordinator');

export function defaultCoordinatorId(): string {
  return `${hostname()}-${process.pid}`.replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 64);
}

/**
 * The `file` option from the command line's form of the log (`DMTP_TX_LOG`, `--log`): 'etcd' (undefined: the
 * etcd log) or 'file:PATH'. Anything else is an InvalidArgumentError naming the setting (`name`) and its value.
 */
export function fileLogOption(spec: string, name = 'DMTP_TX_LOG'): CoordinatorOptions['file'] {
  if (spec === 'etcd') return undefined;
  if (spec.startsWith('file:') && spec.length > 'file:'.length) return { path: spec.slice('file:'.length) };
  throw new InvalidArgumentError(`${name} must be etcd or file:PATH, not '${spec}'`);
}

export class Coordinator extends EventEmitter {
  readonly id: string;
  state: CoordinatorState = 'new';
  manager?: TransactionManager;
  /** HA: the managers of failed coordinators' transactions this one took over (adoptions.ts). */
  readonly adoptions: Adoptions;
  /** Set once this coordinator lost its ownership and stepped down. */
  stepDownReason?: string;
  ha?: HaMember;
  private client?: Etcd3;
  private registry?: Registry;
  private ownsRegistry = false;
  private registration?: Registration;
  private eventSink?: EventSink;
  private lifecycle?: LifecycleSink;
  private managerGateway?: ParticipantGateway;
  private server?: Server;
  private mux?: MuxServiceImpl;
  /**
   * The gRPC health protocol's statuses for "", 'dmtp-coordinator' and 'dmtp-coordinator/<id>': SERVING once
   * recovered, serving and registered; NOT_SERVING from the first step of stop.
   */
  readonly health = new HealthReporter();
  private txLog?: TxLog;
  private gateway?: ParticipantGateway;
  private ownsLog = false;
  private ownsGateway = false;
  private producer?: EventProducer;
  private boundAddress = '';
  private starting?: Promise<string>;
  private startInterrupted = false;
  /** This coordinator's Prometheus metrics, when `metricsPort` is set (see metrics.ts). */
  metrics?: CoordinatorMetrics;
  private metricsServer?: MetricsServer;

  constructor(private readonly options: CoordinatorOptions = {}) {
    super();
    this.id = options.id ?? defaultCoordinatorId();
    validateOwnerId(this.id);
    compileOptions(options.manager); // settings that cannot work are refused here, before anything connects
    if (options.etcd) compileEtcdLogOptions(options.etcd); // with HA, the log is made after the lock is taken
    if (options.ha) compileHaOptions(options.ha);
    if (options.tls) serverCredentials('coordinator', options.tls); // refused here, not after recovery
    if (options.tracing !== undefined && typeof options.tracing !== 'boolean')
      throw new InvalidArgumentError(
        `Coordinator: tracing must be true or false, not ${String(options.tracing)}`,
      );
    if (!options.log && !options.etcd && !options.file)
      throw new Error('Coordinator needs options.etcd or options.file (or a TxLog in options.log)');
    if (options.file && options.ha)
      throw new Error('HA needs the shared etcd log: a file log belongs to one coordinator (set ha: false)');
    if (options.registry === true && !options.etcd)
      throw new Error('registry: true registers in etcd: give options.etcd (endpoints and prefix)');
    this.adoptions = new Adoptions({
      id: this.id,
      makeLog: (fence, onFenceLost) =>
        new EtcdTxLog({
          outcomeRetentionSeconds: options.manager?.outcomeRetentionSeconds,
          ...options.etcd!,
          endpoints: undefined,
          client: this.client,
          fence,
          onFenceLost,
        }),
      makeManager: (owner, txLog) =>
        new TransactionManager({
          id: owner,
          log: txLog,
          gateway: this.managerGateway!,
          eventSink: this.eventSink,
          lifecycle: this.lifecycle,
          clock: options.clock,
          options: options.manager,
          takenOver: true,
        }),
      emit: (event, ...args) => this.emit(event, ...args),
    });
  }

  /** host:port the gRPC server listens on (after start). */
  get address(): string {
    return this.boundAddress;
  }

  /** Log writes of this coordinator refused by its fence (after it lost its ownership). */
  get fencedWrites(): number {
    return this.txLog instanceof EtcdTxLog ? this.txLog.stats.fenced : 0;
  }

  /** host:port of the `/metrics` endpoint (after start, when `metricsPort` is set). */
  get metricsAddress(): string | undefined {
    return this.metricsServer?.address;
  }

  /**
   * Connects, recovers its log, serves and registers; resolves with the bound address. A stop() meanwhile ends
   * the start (it rejects, everything started so far is stopped); so does an etcd that does not answer within
   * its request timeout.
   */
  start(): Promise<string> {
    if (this.state !== 'new') throw new Error(`coordinator ${this.id} cannot start: it is ${this.state}`);
    this.state = 'starting';
    this.starting = this.startUp();
    return this.starting;
  }

  /** "" and 'dmtp-coordinator', and 'dmtp-coordinator/<id>': a restart with this id asks it (a twin probe). */
  private healthNames(): string[] {
    return ['', COORDINATOR_SERVICE, ownHealthName(this.id)];
  }

  /** Between the steps of start(): a stop() asked meanwhile ends it here. */
  private stillStarting(): void {
    if (this.stepDownReason) throw new Error(`coordinator ${this.id} stepped down while starting`);
    if (this.startInterrupted) throw new Error(`coordinator ${this.id} was stopped while starting`);
  }

  private async startUp(): Promise<string> {
    const o = this.options;
    log.info('coordinator starting', {
      id: this.id,
      log: o.log ? o.log.kind : o.file ? `file:${o.file.path}` : 'etcd',
      etcd: o.etcd?.endpoints,
    });
    try {
      this.ownsLog = !o.log;
      if (!o.log && o.file) {
        const fileLog = new FileTxLog({
          outcomeRetentionSeconds: o.manager?.outcomeRetentionSeconds,
          ...o.file,
          clock: o.clock,
        });
        this.txLog = fileLog;
        // A file log is one coordinator's: records of another id would never be recovered (a restart without a
        // fixed id gets a new one), so the coordinator refuses to start rather than leave them in doubt.
        const others = [...(await fileLog.owners())].filter(([owner]) => owner !== this.id);
        if (others.length > 0) {
          const [owner, n] = others[0];
          throw new FailedPreconditionError(
            `transaction log ${o.file.path} holds ${n} unfinished transaction(s) of coordinator '${owner}': start ` +
              `it with that id (--id ${owner}, DMTP_COORDINATOR_ID=${owner}) so it finishes them, not as '${this.id}'`,
            { details: { owner, coordinatorId: this.id } },
          );
        }
      } else if (!o.log) {
        const { endpoints, channel, credentials, auth, ...etcd } = o.etcd!;
        this.client = new Etcd3({
          hosts: endpoints ?? ['http://127.0.0.1:2379'],
          grpcOptions: etcdChannelOptions(channel),
          credentials,
          auth,
          // A frozen etcd fails the start (and every later call) after this, not never.
          defaultCallOptions: etcdCallDeadline(etcd.requestTimeoutMs ?? ETCD_LOG_DEFAULTS.requestTimeoutMs),
          // A page of the log or the registry too large for one answer is read in halves, not sent again.
          faultHandling: etcdFaultHandling(),
        });
        if (o.ha !== false) {
          // An owner taken over is retired once all it owned has been finished for the outcome retention.
          const retireAfterMs =
            (o.manager?.outcomeRetentionSeconds ?? DEFAULTS.outcomeRetentionSeconds) * 1000;
          this.ha = new HaMember(
            this.client,
            etcd.prefix.replace(/\/+$/, ''),
            this.id,
            this.haHooks(),
            { ...o.ha, retireAfterMs: o.ha?.retireAfterMs ?? retireAfterMs },
            o.tls,
          );
          await this.ha.start(); // may wait while a taker still holds this coordinator's transactions
          this.stillStarting();
        }
        this.txLog = new EtcdTxLog({
          outcomeRetentionSeconds: o.manager?.outcomeRetentionSeconds,
          ...etcd,
          client: this.client,
          fence: etcd.fence ?? this.ha?.fence(this.id),
          onFenceLost: () => this.stepDown('a log write was fenced out: this coordinator lost its ownership'),
        });
      } else {
        this.txLog = o.log;
      }
      this.ownsGateway = !o.gateway;
      // With a registry, phase 2 follows a participant instance that came back at another address.
      this.gateway =
        o.gateway ??
        new GrpcParticipantGateway({
          locate: registryLocator(() => this.registry),
          tls: o.tls,
          tracing: o.tracing,
        });
      const failpoint = o.failpoint ?? process.env.DMTP_FAILPOINT;
      let eventSink = o.eventSink;
      let lifecycle = o.lifecycleSink;
      const kafkaEvents = o.kafka?.events !== false;
      if (o.kafka && ((kafkaEvents && !eventSink) || (!lifecycle && o.kafka.lifecycleTopic))) {
        const { brokers, ssl, sasl, allowAutoTopicCreation } = o.kafka;
        this.producer = createKafkaProducer({ brokers, ssl, sasl, allowAutoTopicCreation });
        if (kafkaEvents) eventSink ??= new KafkaEventSink(this.producer);
        if (o.kafka.lifecycleTopic)
          lifecycle ??= new KafkaLifecycleSink(this.producer, o.kafka.lifecycleTopic);
      }
      if (o.metricsPort !== undefined) {
        this.metrics = new CoordinatorMetrics({ coordinatorId: this.id });
        // Its producer's outcomes (relay and lifecycle notices together), queue and topics held missing.
        if (this.producer)
          new EventMetrics({ registry: this.metrics.registry }).trackProducer(this.producer, 'coordinator');
        lifecycle = this.metrics.lifecycleSink(lifecycle);
        if (eventSink) eventSink = this.metrics.eventSink(eventSink);
      }
      this.eventSink = eventSink;
      this.lifecycle = lifecycle;
      this.managerGateway = this.metrics ? this.metrics.gateway(this.gateway) : this.gateway;
      this.manager = new TransactionManager({
        id: this.id,
        log: this.txLog,
        gateway: this.managerGateway,
        eventSink,
        lifecycle,
        clock: o.clock,
        failpoints: new Failpoints(parseFailpoint(failpoint)),
        options: o.manager,
      });
      // Recovery before serving: an outcome query must never see a log that is not loaded yet.
      const recovered = await this.manager.start();
      this.stillStarting();
      this.server = new Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024 });
      const backend = this.ha ? routedBackend(this.manager, () => this.adoptions.byOwner) : this.manager;
      const unary = coordinatorService(backend);
      this.server.addService(
        CoordinatorServiceDefinition,
        o.tracing ? traceUnaryService(CoordinatorServiceDefinition, unary) : unary,
      );
      // The same service on the multiplexed path: initiators' Commit/Rollback share one stream each.
      this.mux = coordinatorMux(backend, o.tracing ? [tracingServerMiddleware()] : []);
      this.server.addService(muxServiceDefinition, this.mux);
      for (const name of this.healthNames()) this.health.set(name, 'NOT_SERVING');
      this.server.addService(HealthService, this.health.implementation());
      const host = o.host ?? '127.0.0.1';
      const port = await new Promise<number>((resolve, reject) =>
        this.server!.bindAsync(`${host}:${o.port ?? 0}`, serverCredentials('coordinator', o.tls), (err, p) =>
          err ? reject(err) : resolve(p),
        ),
      );
      this.boundAddress = `${host}:${port}`;
      this.stillStarting();
      if (this.metrics) {
        // Its own transactions and those of the owners it took over (HA).
        this.metrics.observe(() => [this.manager!, ...this.adoptions.managers()]);
        this.metrics.observeLogs(() => [...(this.txLog ? [this.txLog] : []), ...this.adoptions.logs()]);
        const registry = this.metrics.registry;
        this.metricsServer = await serveMetrics(o.metricsPort!, { registry, host: o.metricsHost ?? host });
      }
      const advertised = o.advertise || this.boundAddress;
      await this.ha?.serve(advertised);
      if (o.registry) {
        this.ownsRegistry = o.registry === true;
        this.registry =
          o.registry === true
            ? new EtcdRegistry({
                client: this.client,
                hosts: o.etcd?.endpoints,
                prefix: o.etcd?.prefix,
                leaseTtlSeconds: this.ha?.config.leaseTtlSeconds,
              })
            : o.registry;
        this.registration = await this.registry.register({
          service: COORDINATOR_SERVICE,
          instanceId: this.id,
          address: advertised,
          metadata: { role: 'coordinator' },
        });
      }
      this.stillStarting();
      this.state = 'running';
      for (const name of this.healthNames()) this.health.set(name, 'SERVING');
      log.info('coordinator started', {
        id: this.id,
        address: this.boundAddress,
        log: this.txLog.kind,
        etcd: o.etcd
          ? {
              ...o.etcd,
              fence: undefined,
              credentials: undefined,
              auth: undefined,
              ...describeEtcdSecurity(o.etcd),
            }
          : undefined,
        file: o.file,
        limits: this.manager.limits,
        failpoint: failpoint || undefined,
        eventSink: eventSink?.constructor.name,
        lifecycleSink: lifecycle?.constructor.name,
        recovered,
        metrics: this.metricsServer ? `http://${this.metricsServer.address}/metrics` : undefined,
        tls: !o.tls ? 'off' : o.tls.requireClientCert ? 'mutual' : 'on',
        tracing: o.tracing ? 'on' : 'off',
        ha: this.ha?.config,
        registered: this.registration ? COORDINATOR_SERVICE : undefined,
      });
      return this.boundAddress;
    } catch (err) {
      await this.teardown();
      throw err;
    }
  }

  /**
   * Stops serving (lets calls in flight finish for drainMs), then the managers, gateway and log. HA: owners
   * whose log is empty are retired; the others are left to a survivor (the ownership lease is revoked).
   */
  async stop(): Promise<void> {
    if (this.state === 'starting') {
      // The start ends at its next step and stops what it began; closing the etcd client ends the calls it waits
      // on now (an etcd that does not answer would hold it for its request timeouts and retries).
      this.startInterrupted = true;
      this.ha?.interrupt();
      this.client?.close();
      await this.starting?.catch(() => undefined);
      return;
    }
    await this.teardown();
  }

  private async teardown(): Promise<void> {
    if (this.state === 'stopped' || this.state === 'stopping') return;
    this.state = 'stopping';
    this.health.setAll('NOT_SERVING');
    // Leave the registry first so nobody picks a coordinator that is going away.
    if (this.ownsRegistry) await this.registry?.close().catch(() => undefined);
    else await this.registration?.deregister().catch(() => undefined);
    // Take nothing over while going away: an owner adopted once the managers are stopped keeps a manager running.
    await this.ha?.stopScanning();
    await this.metricsServer?.close();
    const server = this.server;
    if (server) {
      await new Promise<void>((resolve) => {
        const force = setTimeout(
          () => server.forceShutdown(),
          this.stepDownReason ? 0 : (this.options.drainMs ?? 2_000),
        );
        // The multiplexed streams are long-lived: drain them (calls in flight finish, streams end) first, or
        // tryShutdown would wait for them until the force timer. Health watches end at once.
        this.health.endWatches();
        void (this.mux?.drain() ?? Promise.resolve()).then(() =>
          server.tryShutdown(() => {
            clearTimeout(force);
            resolve();
          }),
        );
      });
    }
    await this.manager?.stop();
    await this.adoptions.stopManagers();
    if (this.ha && !this.stepDownReason) {
      // What the managers left queued (finishes lingering, record removals) goes out while the fences hold:
      // after ha.stop it would be refused as fenced, read as a lost ownership, and left for a taker to redo.
      for (const l of [this.txLog, ...this.adoptions.logs()]) {
        if (l instanceof EtcdTxLog) await l.drained().catch(() => undefined);
      }
    }
    if (this.ha) {
      const retireAfterMs = this.ha.config.retireAfterMs;
      await this.ha.stop(async (owner) => {
        const log = owner === this.id ? this.txLog : this.adoptions.logOf(owner);
        if (!log || this.stepDownReason) return false;
        // Retired, an owner is answered for by nobody, ever. An empty log is not enough: an abort writes nothing,
        // and its prepared branches (a Rollback cut short by this stop, or lost) ask about it later; a commit's
        // outcome is kept for the retention. So only an owner with nothing in flight here for retireAfterMs — as
        // a taker retires one; otherwise the lease goes and a survivor takes the owner over, and retires it then.
        const manager = owner === this.id ? this.manager : this.adoptions.managerOf(owner);
        if (!manager || manager.quietForMs() < retireAfterMs) return false;
        return (await log.load(owner)).length === 0;
      });
    }
    await this.adoptions.closeAll();
    if (this.ownsGateway) this.gateway?.close();
    if (this.ownsLog) await this.txLog?.close().catch(() => undefined);
    await this.producer?.stop();
    this.client?.close();
    this.state = 'stopped';
  }

  /** Lost the own ownership (lease ended, lock taken, a fenced write): stop at once, writing nothing more. */
  private stepDown(reason: string): void {
    if (this.stepDownReason) return;
    this.stepDownReason = reason;
    log.error('coordinator steps down', { id: this.id, reason, fencedWrites: this.fencedWrites });
    // Nothing may be written from now on: stop the managers' timers and retries before anything else.
    void this.manager?.stop();
    this.adoptions.halt();
    this.emit('stepdown', reason);
    if (this.state === 'running') void this.stop().catch(() => undefined);
  }

  /** What the HaMember calls: taking over, dropping and releasing failed owners, and stepping down. */
  private haHooks() {
    const a = this.adoptions;
    return {
      adopt: a.adopt.bind(a),
      drop: a.drop.bind(a),
      idle: a.idle.bind(a),
      release: a.release.bind(a),
      finished: a.finished.bind(a),
      stepDown: (reason: string) => this.stepDown(reason),
    };
  }
}
