/**
 * `dmtp coordinator`: runs one coordinator in the foreground (the etcd log under the prefix, or a file log with
 * --log file:PATH) and registers it
 * as 'dmtp-coordinator' with its owner id as instance id, so initiators pick it and `dmtp tx …` finds the
 * owner of an xid. Stops on SIGINT/SIGTERM: deregisters first, then stops serving, the manager and the log.
 *
 * Flags win over the environment variables coordinator/main.ts reads that have a flag here (each flag names its
 * variable); main.ts's other variables (DMTP_ADVERTISE, DMTP_REGISTER, the DMTP_*_TIMEOUT_MS, DMTP_LOG_PREPARE,
 * DMTP_HA*, …) are not read here: docs/cli.md lists them.
 */
import {
  Coordinator,
  defaultCoordinatorId,
  FileEventSink,
  fileLogOption,
  type ManagerOptions,
} from '../../coordinator';
import { isAddress } from '../../common';
import { isEtcdError } from '../../registry/etcd-channel';
import { UsageError } from '../args';
import { COORDINATOR_SERVICE, endpointsOf, ETCD_FLAGS, JSON_FLAG, type Command } from '../command';
import { CliError, etcdError } from '../errors';
import { envEtcdSecurity, envKafkaSecurity, envTls } from '../tls';

/** The log is the only thing start() talks to over gRPC: a GRPC* error there means etcd is not answering. */
function startError(err: unknown, endpoints: string[], listen: string): Error {
  const e = err as Error;
  if (isEtcdError(err)) return etcdError(err, endpoints);
  if (/EADDRINUSE/.test(e?.message ?? '')) {
    // Node's own listen errors (the metrics endpoint) name their port; grpc-js's name none (the gRPC port).
    const { address, port } = e as { address?: string; port?: number };
    const where = typeof port === 'number' ? `${address ?? '127.0.0.1'}:${port} (--metrics-port)` : listen;
    return new CliError(`cannot listen on ${where}: address already in use`);
  }
  return new CliError(`failed to start: ${e?.message ?? String(err)}`);
}

const opt = (v: unknown) => (v === undefined ? undefined : Number(v));

export const coordinator: Command = {
  spec: {
    name: 'coordinator',
    summary: `Run a coordinator in the foreground and register it as '${COORDINATOR_SERVICE}'.`,
    flags: {
      id: {
        type: 'string',
        description: 'owner id named in its xids; keep it across restarts to recover its transactions',
        env: 'DMTP_COORDINATOR_ID',
        valueName: 'id',
      },
      host: {
        type: 'string',
        description: 'listen host',
        env: 'DMTP_COORDINATOR_HOST',
        default: '127.0.0.1',
      },
      port: {
        type: 'integer',
        description: 'listen port (0 = any free port)',
        env: 'DMTP_COORDINATOR_PORT',
        default: 0,
      },
      advertise: {
        type: 'string',
        description: 'host:port registered for others to call (default: the listen address)',
        valueName: 'host:port',
      },
      log: {
        type: 'string',
        description:
          "transaction log: etcd (shared by coordinators, HA) or file:PATH (this coordinator's disk, no HA)",
        env: 'DMTP_TX_LOG',
        default: 'etcd',
        valueName: 'etcd|file:PATH',
      },
      register: { type: 'boolean', description: `register in etcd (--no-register to skip)`, default: true },
      'prepare-timeout': {
        type: 'duration',
        timer: true,
        description: 'phase 1 deadline of every branch (default 5s)',
      },
      'default-timeout': {
        type: 'duration',
        timer: true,
        description: 'timeout of a transaction begun without one (default 30s)',
      },
      'phase2-call-timeout': {
        type: 'duration',
        timer: true,
        description: 'deadline of one phase-2 call (default 5s)',
      },
      'log-prepare': { type: 'boolean', description: 'write a PREPARING record before phase 1' },
      'log-one-phase': {
        type: 'boolean',
        description: 'write a record before a one-phase commit (--no-log-one-phase to skip)',
        default: true,
      },
      'event-sink': {
        type: 'string',
        description:
          "where committed transactions' staged events go: kafka (the brokers), file:PATH (JSON lines) or none " +
          '(default: kafka when brokers are given, else none; a Commit with events is then refused)',
        env: 'DMTP_EVENT_SINK',
        valueName: 'kafka|file:PATH|none',
      },
      brokers: {
        type: 'string',
        description: 'Kafka brokers for the kafka event sink and lifecycle events',
        env: 'KAFKA_BROKERS',
        valueName: 'host:port,…',
      },
      'lifecycle-topic': {
        type: 'string',
        description: 'also publish transaction lifecycle events (begun, prepared, committed, aborted) here',
        env: 'DMTP_LIFECYCLE_TOPIC',
        valueName: 'topic',
      },
      'auto-create-topics': {
        type: 'boolean',
        description:
          'let a publish make Kafka create a topic it does not have, where the brokers allow it ' +
          "(--no-auto-create-topics: never; a missing topic's events wait until it is created)",
        env: 'DMTP_KAFKA_AUTO_CREATE_TOPICS',
        default: true,
      },
      'metrics-port': {
        type: 'integer',
        description:
          'serve Prometheus metrics on http://<host>:<port>/metrics (0 = any free port; off if unset)',
        env: 'DMTP_METRICS_PORT',
        valueName: 'n',
      },
      tracing: {
        type: 'boolean',
        description:
          'OpenTelemetry spans for the calls it serves and sends; they go to the SDK the process registers ' +
          '(preload one: NODE_OPTIONS=--require ./otel.js)',
        env: 'DMTP_TRACING',
      },
      ...ETCD_FLAGS,
      ...JSON_FLAG,
    },
    notes: [
      'Prints one line once it serves (after recovery): a sentence, or with --json the line coordinator/main.ts ' +
        'prints ({"ready":true,"address":…,"id":…,"pid":…}). Logs go to stderr (DMTP_LOG_LEVEL, default info here).',
    ],
    examples: [
      'dmtp coordinator --id coord-1 --port 7700',
      'dmtp coordinator --id solo --log file:/var/lib/dmtp/solo.txlog --no-register',
      'dmtp coordinator --id coord-2 --brokers 10.0.0.8:9092 --lifecycle-topic dmtp.tx',
      'ETCD_ENDPOINTS=http://10.0.0.7:2379 dmtp coordinator --json',
    ],
  },
  async run({ args, io, env }) {
    env.DMTP_LOG_LEVEL ??= 'info';
    const brokers = (args.flags.brokers as string | undefined)?.split(',').filter(Boolean) ?? [];
    const lifecycleTopic = (args.flags['lifecycle-topic'] as string | undefined) || undefined;
    const sink = (args.flags['event-sink'] as string | undefined) || (brokers.length ? 'kafka' : 'none');
    if (sink !== 'kafka' && sink !== 'none' && !sink.startsWith('file:'))
      throw new CliError(`--event-sink must be kafka, file:PATH or none, not '${sink}'`);
    if ((sink === 'kafka' || lifecycleTopic) && brokers.length === 0)
      throw new CliError(`--event-sink kafka and --lifecycle-topic need --brokers (or KAFKA_BROKERS)`);
    let file;
    try {
      file = fileLogOption(String(args.flags.log), '--log');
    } catch (err) {
      throw new CliError((err as Error).message);
    }
    const advertise = (args.flags.advertise as string | undefined) || undefined;
    // Registered for every initiator and participant to call: a value that is no address breaks them all.
    if (advertise !== undefined && !isAddress(advertise))
      throw new UsageError(`--advertise must be host:port, not '${advertise}'`, 'coordinator');
    const endpoints = endpointsOf(args);
    const prefix = String(args.flags.prefix);
    const manager: ManagerOptions = {
      prepareTimeoutMs: opt(args.flags['prepare-timeout']),
      defaultTimeoutMs: opt(args.flags['default-timeout']),
      phase2CallTimeoutMs: opt(args.flags['phase2-call-timeout']),
      logPrepare: args.flags['log-prepare'] === true || undefined,
      logOnePhase: args.flags['log-one-phase'] !== false,
    };
    const c = new Coordinator({
      id: (args.flags.id as string | undefined) || defaultCoordinatorId(),
      host: String(args.flags.host),
      port: Number(args.flags.port),
      etcd: { endpoints, prefix, ...envEtcdSecurity() },
      file,
      ha: file ? false : undefined,
      eventSink: sink.startsWith('file:') ? new FileEventSink(sink.slice('file:'.length)) : undefined,
      kafka:
        sink === 'kafka' || lifecycleTopic
          ? {
              brokers,
              lifecycleTopic,
              events: sink === 'kafka',
              allowAutoTopicCreation: args.flags['auto-create-topics'] !== false,
              ...envKafkaSecurity(),
            }
          : undefined,
      manager,
      metricsPort: opt(args.flags['metrics-port']),
      // The coordinator registers itself once it serves and deregisters first when it stops.
      registry: args.flags.register ? true : undefined,
      advertise,
      tls: envTls(),
      tracing: args.flags.tracing === true,
    });
    const registered = Boolean(args.flags.register);
    const stopped = new Promise<string>((resolve) => {
      // `on`, not `once`: a second signal (a supervisor or `timeout` signalling the process group too) must not
      // take Node's default action and kill the graceful stop the first one began. The first one counts.
      process.on('SIGINT', () => resolve('SIGINT'));
      process.on('SIGTERM', () => resolve('SIGTERM'));
      c.once('stepdown', (reason: string) => resolve(`step-down: ${reason}`));
    });
    // A signal while starting (etcd slow to answer, a taker slow to hand back) ends the start, not waits for it.
    let interrupted: string | undefined;
    void stopped.then((why) => {
      if (c.state !== 'starting' || why.startsWith('step-down')) return;
      interrupted = why;
      void c.stop();
    });
    try {
      const address = await c.start().catch((err) => {
        if (interrupted) return undefined;
        throw startError(err, endpoints, `${args.flags.host}:${args.flags.port}`);
      });
      if (address === undefined) {
        // Stopped as asked, before it served: said on stderr, exit 0 (as coordinator/main.ts; not a failure).
        io.err(`dmtp coordinator: ${c.id} stopped by ${interrupted} while starting\n`);
        return 0;
      }
      io.out(
        args.flags.json
          ? JSON.stringify({ ready: true, address, id: c.id, pid: process.pid, metrics: c.metricsAddress }) +
              '\n'
          : `coordinator ${c.id} serving on ${address}` +
              (registered ? `, registered as ${COORDINATOR_SERVICE}/${c.id} under ${prefix}` : '') +
              (c.metricsAddress ? `, metrics on http://${c.metricsAddress}/metrics` : '') +
              '\n',
      );
      const why = await stopped;
      if (why.startsWith('step-down')) {
        // Another coordinator holds this owner's transactions now: exit non-zero so a supervisor restarts it.
        io.err(
          `dmtp coordinator: ${c.id} lost its ownership lease (${why.slice('step-down: '.length)}); restart it\n`,
        );
        return 3;
      }
    } finally {
      await c.stop();
    }
  },
};
