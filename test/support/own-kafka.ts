/**
 * A Kafka broker of the test's own (KRaft, one combined broker+controller), for tests that stop Kafka: the
 * shared one on :19092 must never be stopped. Same jars and settings as scripts/services.sh up_kafka
 * (`$DMTP_CACHE_DIR` or `~/.cache/dmtp`, `kafka-3.9.1/libs`), on 127.0.0.1:29092 (controller :29093) by
 * default, with a temp data dir that survives `kill()`/`stop()` so `restart()` comes back with the same log.
 *
 *   const k = await startOwnKafka();   // formats the data dir, starts, waits for "Kafka Server started"
 *   await k.kill();                    // kill -9 (or k.stop(): SIGTERM, controlled shutdown)
 *   await k.restart();                 // same data dir, same ports
 *   await k.close();                   // stops it and removes the data dir
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

export interface OwnKafkaOptions {
  port?: number;
  controllerPort?: number;
  /** Java heap flags (default small: the test's broker holds little). */
  heap?: string[];
  /** How long a start may take before it fails. */
  startTimeoutMs?: number;
  /**
   * Two more listeners for clients: SSL on `sslPort`, and SASL_SSL with PLAIN on `saslPort` accepting `users`
   * (name → password). PEM: the broker's certificate and key, and the CA its clients' certificates may be
   * checked against (client certificates are not required).
   */
  secure?: {
    sslPort: number;
    saslPort: number;
    cert: string;
    key: string;
    ca: string;
    users: Record<string, string>;
  };
}

export interface OwnKafka {
  brokers: string[];
  /** With `secure`: the SSL and SASL_SSL bootstrap addresses. */
  sslBrokers: string[];
  saslBrokers: string[];
  dir: string;
  readonly running: boolean;
  /** kill -9 and wait for the exit. */
  kill(): Promise<void>;
  /** SIGTERM (controlled shutdown) and wait; kill -9 after 20 s. */
  stop(): Promise<void>;
  /** Starts it again on the same data dir and ports. */
  restart(): Promise<void>;
  /** Stops it (kill -9) and deletes the data dir. */
  close(): Promise<void>;
}

export function kafkaLibs(): string {
  const cache = process.env.DMTP_CACHE_DIR || path.join(os.homedir(), '.cache', 'dmtp');
  return path.join(cache, 'kafka-3.9.1', 'libs');
}

function javaBin(): string {
  return process.env.JAVA_HOME ? path.join(process.env.JAVA_HOME, 'bin', 'java') : 'java';
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

export async function startOwnKafka(o: OwnKafkaOptions = {}): Promise<OwnKafka> {
  const port = o.port ?? 29092;
  const controllerPort = o.controllerPort ?? 29093;
  const heap = o.heap ?? ['-Xms128m', '-Xmx384m'];
  const startTimeoutMs = o.startTimeoutMs ?? 90_000;
  if ((await portOpen(port)) || (await portOpen(controllerPort))) {
    throw new Error(
      `own Kafka: port ${port} or ${controllerPort} is taken (another test's broker still up?)`,
    );
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dmtp-own-kafka-'));
  const props = path.join(dir, 'server.properties');
  const s = o.secure;
  const secureProps: string[] = [];
  if (s) {
    // A PEM keystore is the private key (PKCS#8) followed by the certificate chain.
    const keystore = path.join(dir, 'keystore.pem');
    writeFileSync(keystore, Buffer.concat([readFileSync(s.key), readFileSync(s.cert)]));
    const users = Object.entries(s.users)
      .map(([u, p]) => `user_${u}="${p}"`)
      .join(' ');
    secureProps.push(
      'ssl.keystore.type=PEM',
      `ssl.keystore.location=${keystore}`,
      'ssl.truststore.type=PEM',
      `ssl.truststore.location=${s.ca}`,
      'sasl.enabled.mechanisms=PLAIN',
      `listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required ${users};`,
    );
  }
  const clientListeners = s ? `,SSL://127.0.0.1:${s.sslPort},SASL_SSL://127.0.0.1:${s.saslPort}` : '';
  const log4j = path.join(dir, 'log4j.properties');
  writeFileSync(
    props,
    [
      'process.roles=broker,controller',
      'node.id=1',
      `controller.quorum.voters=1@127.0.0.1:${controllerPort}`,
      `listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controllerPort}${clientListeners}`,
      `advertised.listeners=PLAINTEXT://127.0.0.1:${port}${clientListeners}`,
      'controller.listener.names=CONTROLLER',
      'inter.broker.listener.name=PLAINTEXT',
      'listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL',
      ...secureProps,
      `log.dirs=${path.join(dir, 'data')}`,
      'num.partitions=1',
      'auto.create.topics.enable=true',
      'offsets.topic.replication.factor=1',
      'offsets.topic.num.partitions=1',
      'transaction.state.log.replication.factor=1',
      'transaction.state.log.min.isr=1',
      'transaction.state.log.num.partitions=1',
      'group.initial.rebalance.delay.ms=0',
      '',
    ].join('\n'),
  );
  writeFileSync(
    log4j,
    [
      'log4j.rootLogger=INFO, stdout',
      'log4j.appender.stdout=org.apache.log4j.ConsoleAppender',
      'log4j.appender.stdout.layout=org.apache.log4j.PatternLayout',
      'log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n',
      'log4j.logger.kafka=INFO',
      'log4j.logger.org.apache.kafka=WARN',
      'log4j.logger.kafka.request.logger=WARN',
      'log4j.logger.state.change.logger=WARN',
      '',
    ].join('\n'),
  );
  const cp = `${kafkaLibs()}/*`;
  const log4jFlag = `-Dlog4j.configuration=file:${log4j}`;
  const format = spawnSync(
    javaBin(),
    [
      '-cp',
      cp,
      log4jFlag,
      'kafka.tools.StorageTool',
      'format',
      '-t',
      'ZG10cC1vd24ta2Fma2EtMQ', // 16 bytes ("dmtp-own-kafka-1") in URL-safe base64
      '-c',
      props,
    ],
    { encoding: 'utf8', timeout: 60_000 },
  );
  if (format.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(
      `own Kafka: StorageTool format failed: ${format.stderr || format.stdout || format.error}`,
    );
  }

  let proc: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let output = '';

  const launch = async (): Promise<void> => {
    output = '';
    const p = spawn(
      javaBin(),
      [
        ...heap,
        '-XX:+UseSerialGC',
        '-XX:TieredStopAtLevel=1',
        '-Djava.awt.headless=true',
        log4jFlag,
        `-Dkafka.logs.dir=${dir}`,
        '-cp',
        cp,
        'kafka.Kafka',
        props,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    proc = p;
    let onEarlyExit = (_code: number | null, _signal: NodeJS.Signals | null): void => undefined;
    exited = new Promise((resolve) => p.once('exit', () => resolve()));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        p.kill('SIGKILL');
        reject(new Error(`own Kafka did not start within ${startTimeoutMs} ms:\n${output.slice(-3_000)}`));
      }, startTimeoutMs);
      const onData = (d: Buffer) => {
        output = (output + d.toString()).slice(-20_000);
        if (output.includes('Kafka Server started')) {
          clearTimeout(timer);
          resolve();
        }
      };
      p.stdout!.on('data', onData);
      p.stderr!.on('data', onData);
      onEarlyExit = (code: number | null, signal: NodeJS.Signals | null) => {
        clearTimeout(timer);
        reject(new Error(`own Kafka exited (${code ?? signal}) while starting:\n${output.slice(-3_000)}`));
      };
      p.once('exit', onEarlyExit);
    });
    // Keep draining its output so a full pipe never blocks the broker.
    p.off('exit', onEarlyExit);
    p.stdout!.removeAllListeners('data');
    p.stderr!.removeAllListeners('data');
    p.stdout!.resume();
    p.stderr!.resume();
  };

  const isRunning = () => !!proc && proc.exitCode === null && proc.signalCode === null;
  const signal = async (sig: NodeJS.Signals, graceMs: number) => {
    if (!isRunning()) return;
    const p = proc!;
    p.kill(sig);
    const t = setTimeout(() => p.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(t);
  };

  await launch();
  return {
    brokers: [`127.0.0.1:${port}`],
    sslBrokers: s ? [`127.0.0.1:${s.sslPort}`] : [],
    saslBrokers: s ? [`127.0.0.1:${s.saslPort}`] : [],
    dir,
    get running() {
      return isRunning();
    },
    kill: () => signal('SIGKILL', 0),
    stop: () => signal('SIGTERM', 20_000),
    restart: async () => {
      await signal('SIGKILL', 0);
      await launch();
    },
    close: async () => {
      await signal('SIGKILL', 0);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
