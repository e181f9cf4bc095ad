/**
 * An etcd process owned by one test file, for tests that kill, pause and restart etcd: never the shared one.
 * Client port 23890, peer port 23990 unless given, data under `.dmtp/test-etcd-<name>` (removed by `destroy()`).
 * With `tls` (PEM file paths) it serves its clients over TLS and requires their certificates.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { get as httpsGet } from 'node:https';
import { createConnection } from 'node:net';
import { resolve } from 'node:path';

const portOpen = (port: number) =>
  new Promise<boolean>((done) => {
    const s = createConnection({ host: '127.0.0.1', port }, () => {
      s.destroy();
      done(true);
    });
    s.on('error', () => done(false));
  });

export class OwnEtcd {
  readonly dataDir: string;
  readonly endpoint: string;
  private proc?: ChildProcess;
  private output = '';

  constructor(
    readonly name: string,
    readonly clientPort = 23890,
    readonly peerPort = 23990,
    readonly tls?: { ca: string; cert: string; key: string },
  ) {
    this.dataDir = resolve(__dirname, '../../.dmtp', `test-etcd-${name}`);
    this.endpoint = `${tls ? 'https' : 'http'}://127.0.0.1:${clientPort}`;
  }

  /** Starts etcd (on the existing data dir, if any) and resolves once it answers /health. */
  async start(): Promise<void> {
    if (this.proc) throw new Error('own etcd already running');
    for (const port of [this.clientPort, this.peerPort]) {
      if (await portOpen(port))
        throw new Error(`port ${port} is taken: a leftover test etcd? (not the shared one)`);
    }
    const peer = `http://127.0.0.1:${this.peerPort}`;
    const proc = spawn(
      'etcd',
      [
        ...['--name', this.name, '--data-dir', this.dataDir],
        ...['--listen-client-urls', this.endpoint, '--advertise-client-urls', this.endpoint],
        ...['--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer],
        ...['--initial-cluster', `${this.name}=${peer}`],
        ...['--heartbeat-interval', '100', '--election-timeout', '1000'],
        ...(this.tls
          ? [
              ...['--cert-file', this.tls.cert, '--key-file', this.tls.key],
              ...['--trusted-ca-file', this.tls.ca, '--client-cert-auth'],
            ]
          : []),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const keep = (b: Buffer) => (this.output = (this.output + b.toString()).slice(-4000));
    proc.stdout!.on('data', keep);
    proc.stderr!.on('data', keep);
    this.proc = proc;
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`own etcd exited (${proc.exitCode}):\n${this.output}`);
      try {
        if ((await this.health()) === 'true') return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`own etcd not healthy within 15 s:\n${this.output}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** GET /health (over TLS with the test certificates when it serves TLS). */
  private health(): Promise<string | undefined> {
    if (!this.tls) {
      return fetch(`${this.endpoint}/health`).then(async (res) =>
        res.ok ? ((await res.json()) as { health?: string }).health : undefined,
      );
    }
    const { ca, cert, key } = this.tls;
    return new Promise((done, fail) => {
      const req = httpsGet(
        `${this.endpoint}/health`,
        { ca: readFileSync(ca), cert: readFileSync(cert), key: readFileSync(key), agent: false },
        (res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => done(res.statusCode === 200 ? JSON.parse(body).health : undefined));
        },
      );
      req.on('error', fail);
    });
  }

  /** Freezes this etcd (SIGSTOP): connections are still accepted by the kernel, nothing is ever answered. */
  pause(): void {
    if (!this.proc) throw new Error('own etcd is not running');
    this.proc.kill('SIGSTOP');
  }

  /** Kills this etcd (SIGKILL, like a crash; a paused one too) and waits until the process is gone. */
  async kill(): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    this.proc = undefined;
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGKILL');
    await exited;
  }

  /** Kills it if running and removes its data. */
  async destroy(): Promise<void> {
    await this.kill();
    await rm(this.dataDir, { recursive: true, force: true });
  }
}
