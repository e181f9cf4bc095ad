/**
 * Runnable coordinator: `npx tsx coordinator/main.ts`. Prints one JSON line `{"ready":true,"address":…,"id":…}`
 * on stdout once it serves (after recovery). Stops gracefully on SIGTERM/SIGINT. When it loses its ownership
 * (HA: its lease ended, e.g. after a long pause, and a survivor took over) it steps down: prints
 * `{"steppedDown":true,"reason":…,"fencedWrites":N}` and exits with code 3.
 *
 * Environment:
 *   DMTP_COORDINATOR_ID        owner id (default <hostname>-<pid>; set it to keep ownership across restarts)
 *   DMTP_COORDINATOR_HOST      listen host (default 127.0.0.1)
 *   DMTP_COORDINATOR_PORT      listen port (default 0 = any free port)
 *   DMTP_TX_LOG                'etcd' (default) or 'file:PATH': the file log of a lone coordinator (no HA; etcd
 *                              is then used only to register, DMTP_REGISTER=0 to run without etcd at all)
 *   ETCD_ENDPOINTS             comma-separated (default http://127.0.0.1:23790)
 *   DMTP_ETCD_PREFIX           key prefix of the log and of the registry (default: DMTP_PREFIX, else /dmtp)
 *   DMTP_PREFIX                the same (the CLI's name for it); DMTP_ETCD_PREFIX wins when both are set
 *   DMTP_REGISTER              0/false/no/off: do not register as 'dmtp-coordinator' (default: register)
 *   DMTP_ADVERTISE             host:port registered for others to call (default: the listen address)
 *   DMTP_HA                    0/false/no/off: no ownership lock, fencing or takeover (a lone coordinator)
 *   DMTP_HA_LEASE_TTL_S        TTL of the ownership lease in seconds (default 10); also the registration's
 *   DMTP_HA_SCAN_MS            period of the HA scan for orphans and reclaims (default 500)
 *   DMTP_HA_RETIRE_AFTER_MS    retire an owner taken over once all it owned is finished this long (default: the
 *                              outcome retention, an hour)
 *   DMTP_LOG_LEVEL             default info here (the compiled config is logged at start)
 *   DMTP_FAILPOINT             name[:exit|:hang][:N] (fault tests; see failpoints.ts)
 *   DMTP_PREPARE_TIMEOUT_MS, DMTP_DEFAULT_TIMEOUT_MS, DMTP_PHASE2_CALL_TIMEOUT_MS   manager timings
 *   DMTP_LOG_PREPARE=1         write a PREPARING record before phase 1 (see options.ts logPrepare)
 *   DMTP_LOG_ONE_PHASE=0       write no record before a one-phase commit (see options.ts logOnePhase)
 *   DMTP_EVENT_SINK            'kafka' (default when KAFKA_BROKERS is set): staged events to Kafka (KAFKA_BROKERS);
 *                              'file:PATH': as JSON lines to PATH (tests); 'none': a Commit with events is refused
 *   DMTP_LIFECYCLE_TOPIC       Kafka topic for lifecycle notices (begun/prepared/committed/aborted), off by default
 *   DMTP_METRICS_PORT          serve Prometheus metrics on http://<host>:<port>/metrics (0 = any free port); off if unset
 *   DMTP_TRACING               1/true/yes/on: OpenTelemetry spans (Coordinator's `tracing`); they go to the SDK the
 *                              process registers, e.g. preloaded with NODE_OPTIONS=--require ./otel.js (default off)
 */
import { parseYesNo } from '../common';
import { Coordinator, defaultCoordinatorId, fileLogOption } from './coordinator';
import { FileEventSink } from './event-sink-file';
import type { ManagerOptions } from './options';
import { etcdSecurityFromEnv, etcdUnreachable, isEtcdError } from '../registry';
import { tlsFromEnv } from '../rpc/tls';
import { kafkaSecurityFromEnv } from '../events/client';

/** ETCD_ENDPOINTS, empty or unset meaning the local default. */
const etcdEndpoints = () => (process.env.ETCD_ENDPOINTS || 'http://127.0.0.1:23790').split(',');

/** A setting the environment got wrong: reported in one line, without a stack. */
class SettingError extends Error {}

function num(name: string, min = 0): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min)
    throw new SettingError(`${name} must be a whole number >= ${min}, not '${v}'`);
  return n;
}

/** A yes/no setting: 1/true/yes/on or 0/false/no/off (any case); unset gives `dflt`; anything else is refused. */
function flag(name: string, dflt: boolean): boolean {
  const v = process.env[name];
  if (v === undefined || v.trim() === '') return dflt;
  const yes = parseYesNo(v);
  if (yes === undefined)
    throw new SettingError(`${name} must be 1/true/yes/on or 0/false/no/off, not '${v}'`);
  return yes;
}

async function main(): Promise<void> {
  const env = process.env;
  env.DMTP_LOG_LEVEL ??= 'info';
  const manager: ManagerOptions = {
    prepareTimeoutMs: num('DMTP_PREPARE_TIMEOUT_MS'),
    defaultTimeoutMs: num('DMTP_DEFAULT_TIMEOUT_MS'),
    phase2CallTimeoutMs: num('DMTP_PHASE2_CALL_TIMEOUT_MS'),
    logPrepare: flag('DMTP_LOG_PREPARE', false),
    logOnePhase: flag('DMTP_LOG_ONE_PHASE', true),
  };
  const sink = env.DMTP_EVENT_SINK || (env.KAFKA_BROKERS ? 'kafka' : 'none');
  if (sink !== 'kafka' && sink !== 'none' && !sink.startsWith('file:')) {
    throw new SettingError(`DMTP_EVENT_SINK must be kafka, file:PATH or none, not '${sink}'`);
  }
  const file = fileLogOption(env.DMTP_TX_LOG || 'etcd');
  const brokers = (env.KAFKA_BROKERS || '127.0.0.1:19092').split(',');
  const c = new Coordinator({
    id: env.DMTP_COORDINATOR_ID || defaultCoordinatorId(),
    host: env.DMTP_COORDINATOR_HOST || '127.0.0.1',
    port: num('DMTP_COORDINATOR_PORT') ?? 0,
    etcd: {
      endpoints: etcdEndpoints(),
      prefix: env.DMTP_ETCD_PREFIX || env.DMTP_PREFIX || '/dmtp',
      ...etcdSecurityFromEnv(),
    },
    file,
    registry: flag('DMTP_REGISTER', true) ? true : undefined,
    advertise: env.DMTP_ADVERTISE || undefined,
    ha:
      !flag('DMTP_HA', true) || file
        ? false
        : {
            leaseTtlSeconds: num('DMTP_HA_LEASE_TTL_S', 1),
            // 0 made the scan a busy loop, and retired a taken-over owner at its first quiet scan.
            scanIntervalMs: num('DMTP_HA_SCAN_MS', 1),
            retireAfterMs: num('DMTP_HA_RETIRE_AFTER_MS', 1),
          },
    eventSink: sink.startsWith('file:') ? new FileEventSink(sink.slice('file:'.length)) : undefined,
    kafka:
      sink === 'kafka' || env.DMTP_LIFECYCLE_TOPIC
        ? {
            brokers,
            lifecycleTopic: env.DMTP_LIFECYCLE_TOPIC || undefined,
            events: sink === 'kafka',
            allowAutoTopicCreation: flag('DMTP_KAFKA_AUTO_CREATE_TOPICS', true),
            ...kafkaSecurityFromEnv(),
          }
        : undefined,
    manager,
    metricsPort: num('DMTP_METRICS_PORT'),
    tls: tlsFromEnv(),
    tracing: flag('DMTP_TRACING', false),
  });
  c.once('stepdown', (reason: string) => {
    const exit = () =>
      c.state === 'stopped' || c.state === 'new'
        ? (process.stdout.write(
            JSON.stringify({ steppedDown: true, reason, fencedWrites: c.fencedWrites, id: c.id }) + '\n',
          ),
          process.exit(3))
        : setTimeout(exit, 50);
    setTimeout(() => process.exit(3), 5_000).unref();
    exit();
  });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    // While starting: start() ends (rejects) and stops what it began; main's catch reports it.
    if (c.state === 'starting') {
      signalledWhileStarting = signal;
      void c.stop();
      return;
    }
    c.stop().then(
      () => process.exit(0),
      (err) => {
        process.stderr.write(`coordinator stop failed on ${signal}: ${String(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  const address = await c.start();
  const metrics = c.metricsAddress;
  process.stdout.write(JSON.stringify({ ready: true, address, id: c.id, pid: process.pid, metrics }) + '\n');
}

/** The signal that stopped the coordinator before it served, if one did. */
let signalledWhileStarting: string | undefined;

main().catch((err) => {
  if (signalledWhileStarting) {
    process.stderr.write(`coordinator stopped by ${signalledWhileStarting} while starting\n`);
    process.exit(0);
  }
  // A setting, a refusal (a typed DMTP error) or etcd not answering in one line; anything else with its stack.
  const oneLine = err instanceof SettingError || (err instanceof Error && 'code' in err);
  const text = isEtcdError(err)
    ? etcdUnreachable(err, etcdEndpoints())
    : err instanceof Error
      ? oneLine
        ? err.message
        : err.stack
      : String(err);
  process.stderr.write(`coordinator failed to start: ${text}\n`);
  process.exit(1);
});
