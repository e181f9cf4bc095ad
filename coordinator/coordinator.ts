/**
 * A runnable coordinator: the etcd transaction log, the grpc-js participant gateway, the manager (recovery
 * first) and the gRPC server, started in that order and stopped in reverse. The compiled configuration is
 * logged at start.
 */
import { hostname } from 'node:os';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import { logger, validateOwnerId, type Clock } from '../common';
import type { EventProducer } from '../events';
import type { EventSink, LifecycleSink } from './event-sink';
import { createKafkaProducer, KafkaEventSink, KafkaLifecycleSink } from './event-sink-kafka';
import { Failpoints, parseFailpoint } from './failpoints';
import type { ParticipantGateway } from './gateway';
import { EtcdTxLog, type EtcdTxLogOptions } from './log/etcd-log';
import type { TxLog } from './log/tx-log';
import { TransactionManager } from './manager';
import type { ManagerOptions } from './options';
import { CoordinatorMetrics } from './metrics';
import { serveMetrics, type MetricsServer } from '../rpc/metrics';
import { GrpcParticipantGateway } from './participant-gateway';
import { coordinatorService, CoordinatorServiceDefinition } from './service';

export interface CoordinatorOptions {
  /** Owner id named in this coordinator's xids and log keys (default `<hostname>-<pid>`, sanitised). */
  id?: string;
  /** Listen host (default 127.0.0.1) and port (default 0 = any free port). */
  host?: string;
  port?: number;
  /** The etcd log (the default): endpoints and key prefix, plus batching knobs. */
  etcd?: Omit<EtcdTxLogOptions, 'client'>;
  /** A TxLog to use instead of the etcd one (tests). Not closed by stop(). */
  log?: TxLog;
  /** A gateway to use instead of the grpc-js one (tests). Not closed by stop(). */
  gateway?: ParticipantGateway;
  /** Where committed staged events go (overrides `kafka`). */
  eventSink?: EventSink;
  lifecycleSink?: LifecycleSink;
  /**
   * Kafka through the shared producer of events/: staged events are relayed to it, and lifecycle notices go to
   * `lifecycleTopic` when set. The producer is owned (started and stopped) by the coordinator.
   */
  kafka?: { brokers: string[]; lifecycleTopic?: string };
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
}

export type CoordinatorState = 'new' | 'starting' | 'running' | 'stopping' | 'stopped';

const log = logger('coordinator');

export function defaultCoordinatorId(): string {
  return `${hostname()}-${process.pid}`.replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 64);
}

export class Coordinator {
  readonly id: string;
  state: CoordinatorState = 'new';
  manager?: TransactionManager;
  private server?: Server;
  private txLog?: TxLog;
  private gateway?: ParticipantGateway;
  private ownsLog = false;
  private ownsGateway = false;
  private producer?: EventProducer;
  private boundAddress = '';
  /** This coordinator's Prometheus metrics, when `metricsPort` is set (see metrics.ts). */
  metrics?: CoordinatorMetrics;
  private metricsServer?: MetricsServer;

  constructor(private readonly options: CoordinatorOptions = {}) {
    this.id = options.id ?? defaultCoordinatorId();
    validateOwnerId(this.id);
    if (!options.log && !options.etcd)
      throw new Error('Coordinator needs options.etcd (or a TxLog in options.log)');
  }

  /** host:port the gRPC server listens on (after start). */
  get address(): string {
    return this.boundAddress;
  }

  /** host:port of the `/metrics` endpoint (after start, when `metricsPort` is set). */
  get metricsAddress(): string | undefined {
    return this.metricsServer?.address;
  }

  async start(): Promise<string> {
    if (this.state !== 'new') throw new Error(`coordinator ${this.id} cannot start: it is ${this.state}`);
    this.state = 'starting';
    const o = this.options;
    try {
      this.ownsLog = !o.log;
      this.txLog = o.log ?? new EtcdTxLog(o.etcd!);
      this.ownsGateway = !o.gateway;
      this.gateway = o.gateway ?? new GrpcParticipantGateway();
      const failpoint = o.failpoint ?? process.env.DMTP_FAILPOINT;
      let eventSink = o.eventSink;
      let lifecycle = o.lifecycleSink;
      if (o.kafka && (!eventSink || (!lifecycle && o.kafka.lifecycleTopic))) {
        this.producer = createKafkaProducer({ brokers: o.kafka.brokers });
        eventSink ??= new KafkaEventSink(this.producer);
        if (o.kafka.lifecycleTopic)
          lifecycle ??= new KafkaLifecycleSink(this.producer, o.kafka.lifecycleTopic);
      }
      if (o.metricsPort !== undefined) {
        this.metrics = new CoordinatorMetrics({ coordinatorId: this.id });
        lifecycle = this.metrics.lifecycleSink(lifecycle);
        if (eventSink) eventSink = this.metrics.eventSink(eventSink);
      }
      this.manager = new TransactionManager({
        id: this.id,
        log: this.txLog,
        gateway: this.metrics ? this.metrics.gateway(this.gateway) : this.gateway,
        eventSink,
        lifecycle,
        clock: o.clock,
        failpoints: new Failpoints(parseFailpoint(failpoint)),
        options: o.manager,
      });
      // Recovery before serving: an outcome query must never see a log that is not loaded yet.
      const recovered = await this.manager.start();
      this.server = new Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024 });
      this.server.addService(CoordinatorServiceDefinition, coordinatorService(this.manager));
      const host = o.host ?? '127.0.0.1';
      const port = await new Promise<number>((resolve, reject) =>
        this.server!.bindAsync(`${host}:${o.port ?? 0}`, ServerCredentials.createInsecure(), (err, p) =>
          err ? reject(err) : resolve(p),
        ),
      );
      this.boundAddress = `${host}:${port}`;
      if (this.metrics) {
        this.metrics.observe(this.manager);
        const registry = this.metrics.registry;
        this.metricsServer = await serveMetrics(o.metricsPort!, { registry, host: o.metricsHost ?? host });
      }
      this.state = 'running';
      log.info('coordinator started', {
        id: this.id,
        address: this.boundAddress,
        log: this.txLog.kind,
        etcd: o.etcd ? { ...o.etcd, fence: undefined } : undefined,
        limits: this.manager.limits,
        failpoint: failpoint || undefined,
        eventSink: eventSink?.constructor.name,
        lifecycleSink: lifecycle?.constructor.name,
        recovered,
        metrics: this.metricsServer ? `http://${this.metricsServer.address}/metrics` : undefined,
      });
      return this.boundAddress;
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  /** Stops serving (lets calls in flight finish for drainMs), then the manager, gateway and log. */
  async stop(): Promise<void> {
    if (this.state === 'stopped' || this.state === 'stopping') return;
    this.state = 'stopping';
    await this.metricsServer?.close();
    const server = this.server;
    if (server) {
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => server.forceShutdown(), this.options.drainMs ?? 2_000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
    }
    await this.manager?.stop();
    if (this.ownsGateway) this.gateway?.close();
    if (this.ownsLog) await this.txLog?.close();
    await this.producer?.stop();
    this.state = 'stopped';
  }
}
