/**
 * The pieces of an HA cluster that the chaos test and the HA benchmark start and stop by their handles: a
 * 3-member etcd cluster of their own (scripts/services.sh with its own state dir and ports), coordinators and
 * bank participant instances as supervised child processes (restartable after a `kill -9`), and the bank
 * databases with their checks.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Pool } from 'pg';
import { spawnHaCoordinator, type HaChild } from './ha-coordinator';
import { entryArgs } from './node-entry';

const ROOT = path.join(__dirname, '..', '..');
const SERVICES = path.join(ROOT, 'scripts', 'services.sh');
const HA_BANK_MAIN = path.join(__dirname, 'ha-bank-main.ts');

/** A 3-member etcd cluster on loopback, ports 24790-24792 (peers 24800-24802), state in a temp dir. */
export class EtcdCluster {
  readonly state = mkdtempSync(path.join(tmpdir(), 'dmtp-ha-'));
  readonly endpoints: string[];

  constructor(
    readonly members = 3,
    readonly clientPort = 24790,
    readonly peerPort = 24800,
  ) {
    this.endpoints = Array.from({ length: members }, (_, i) => `http://127.0.0.1:${clientPort + i}`);
  }

  private run(...args: string[]): Promise<string> {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      DMTP_STATE_DIR: this.state,
      DMTP_ETCD_PORT: String(this.clientPort),
      DMTP_ETCD_PEER_PORT: String(this.peerPort),
    };
    delete env.ETCD_ENDPOINTS; // otherwise the script uses that etcd and starts nothing
    return new Promise((resolve, reject) =>
      execFile('bash', [SERVICES, ...args], { env, cwd: ROOT, timeout: 90_000 }, (err, out, errOut) =>
        err ? reject(new Error(`services.sh ${args.join(' ')}: ${err.message}\n${errOut}`)) : resolve(out),
      ),
    );
  }

  /** Starts the members that are not running (all at first; a killed one later). */
  async up(): Promise<void> {
    await this.run('up', 'etcd', '--etcd-members', String(this.members));
  }

  /** kill -9 of one member by its pid file. */
  kill(i: number): void {
    const pid = Number(readFileSync(path.join(this.state, 'run', `etcd${i}.pid`), 'utf8').trim());
    process.kill(pid, 'SIGKILL');
  }

  async down(): Promise<void> {
    await this.run('down', 'etcd').catch(() => undefined);
    rmSync(this.state, { recursive: true, force: true });
  }
}

/** A child process restarted whenever it dies, until stopped; `kill9()` kills it and restarts it after a delay. */
export class Supervised<T extends { proc: ChildProcess; exited: Promise<unknown> }> {
  current?: T;
  restarts = 0;
  private stopping = false;
  private restarting?: Promise<void>;

  constructor(
    readonly name: string,
    private readonly launch: () => Promise<T>,
    private readonly onError: (msg: string) => void = (m) => process.stderr.write(m + '\n'),
  ) {}

  async start(): Promise<T> {
    const c = await this.launch();
    this.current = c;
    void c.exited.then(() => {
      if (this.stopping || this.current !== c || this.restarting) return;
      this.restarting = this.restartAfter(200);
    });
    return c;
  }

  private async restartAfter(ms: number): Promise<void> {
    try {
      await new Promise((r) => setTimeout(r, ms));
      for (let i = 0; i < 20 && !this.stopping; i++) {
        try {
          await this.start();
          this.restarts++;
          return;
        } catch (err) {
          this.onError(`${this.name}: restart failed: ${(err as Error).message}`);
          await new Promise((r) => setTimeout(r, 1_000));
        }
      }
    } finally {
      this.restarting = undefined;
    }
  }

  /** kill -9, then restarts it after `restartAfterMs` and resolves once it is ready again. */
  async kill9(restartAfterMs: number): Promise<void> {
    const c = this.current;
    if (!c) return;
    this.restarting = this.restartAfter(restartAfterMs);
    c.proc.kill('SIGKILL');
    await c.exited;
    await this.restarting;
  }

  /** Waits for a restart in progress. */
  async settled(): Promise<void> {
    await this.restarting;
  }

  async stop(graceful = true): Promise<void> {
    this.stopping = true;
    await this.restarting?.catch(() => undefined);
    const c = this.current;
    if (!c || c.proc.exitCode !== null || c.proc.signalCode !== null) return;
    c.proc.kill('SIGCONT');
    c.proc.kill(graceful ? 'SIGTERM' : 'SIGKILL');
    const t = setTimeout(() => c.proc.kill('SIGKILL'), 8_000);
    await c.exited;
    clearTimeout(t);
  }
}

export interface BankChild {
  proc: ChildProcess;
  exited: Promise<number | string>;
  address: string;
}

export function spawnHaBank(spec: {
  url: string;
  service: string;
  instanceId: string;
  port: number;
  endpoints: string[];
  prefix: string;
  leaseTtlSeconds: number;
}): Promise<BankChild> {
  const proc = spawn(process.execPath, entryArgs(HA_BANK_MAIN), {
    stdio: ['ignore', 'pipe', 'inherit'],
    cwd: ROOT,
    env: {
      ...process.env,
      HA_BANK: JSON.stringify(spec),
      DMTP_LOG_LEVEL: process.env.DMTP_LOG_LEVEL ?? 'error',
    },
  });
  const exited = new Promise<number | string>((resolve) =>
    proc.once('exit', (code, signal) => resolve(code ?? signal ?? -1)),
  );
  return new Promise((resolve, reject) => {
    let out = '';
    const early = (code: number | null) =>
      reject(new Error(`bank ${spec.instanceId} exited (${code}) before ready`));
    proc.once('exit', early);
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (!out.includes('"ready":true')) return;
      proc.off('exit', early);
      proc.stdout!.removeAllListeners('data');
      proc.stdout!.resume();
      resolve({ proc, exited, address: `127.0.0.1:${spec.port}` });
    });
  });
}

export function supervisedCoordinator(o: Parameters<typeof spawnHaCoordinator>[0]): Supervised<HaChild> {
  return new Supervised(`coordinator ${o.id}`, () => spawnHaCoordinator({ readyTimeoutMs: 60_000, ...o }));
}

// ---- the bank databases and their checks ----------------------------------------------------------------------

export async function sumOf(pool: Pool): Promise<number> {
  return Number(
    (await pool.query<{ s: string }>('SELECT coalesce(sum(balance), 0) AS s FROM accounts')).rows[0].s,
  );
}

export async function ledgerXids(pool: Pool): Promise<Set<string>> {
  return new Set(
    (await pool.query<{ xid: string }>('SELECT DISTINCT xid FROM ledger')).rows.map((r) => r.xid),
  );
}

export async function openBranches(pool: Pool): Promise<number> {
  const r = await pool.query<{ n: string }>(
    `SELECT count(*) AS n FROM dmtp_branches WHERE status IN ('registered', 'prepared')`,
  );
  return Number(r.rows[0].n);
}

export async function preparedCount(pool: Pool): Promise<number> {
  const r = await pool.query<{ n: string }>(
    'SELECT count(*) AS n FROM pg_prepared_xacts WHERE database = current_database()',
  );
  return Number(r.rows[0].n);
}
