/**
 * HA tests: coordinator/main.ts as a child process with HA settings (short ownership lease), keeping every JSON
 * line it prints (the ready line, and the step-down line of a fenced-out coordinator), and the etcd reads the
 * HA tests and the chaos checker share (owner routes, leftover log records).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { entryArgs } from './node-entry';

export interface HaChild {
  id: string;
  proc: ChildProcess;
  address: string;
  pid: number;
  /** Every JSON line printed on stdout (ready first). */
  lines: Record<string, unknown>[];
  exited: Promise<number | string>;
  stop(): Promise<void>;
  kill(): Promise<void>;
}

export interface HaChildOptions {
  id: string;
  prefix: string;
  endpoints: string[];
  port?: number;
  leaseTtlSeconds?: number;
  failpoint?: string;
  env?: Record<string, string>;
  /** How long to wait for the ready line (a restarted coordinator may wait for a hand-back). */
  readyTimeoutMs?: number;
}

export function spawnHaCoordinator(o: HaChildOptions): Promise<HaChild> {
  const root = path.join(__dirname, '..', '..');
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ETCD_ENDPOINTS: o.endpoints.join(','),
    DMTP_ETCD_PREFIX: o.prefix,
    DMTP_COORDINATOR_ID: o.id,
    DMTP_COORDINATOR_PORT: String(o.port ?? 0),
    DMTP_FAILPOINT: o.failpoint ?? '',
    DMTP_LOG_LEVEL: process.env.DMTP_LOG_LEVEL ?? 'error',
    DMTP_EVENT_SINK: 'none',
    DMTP_HA_LEASE_TTL_S: String(o.leaseTtlSeconds ?? 2),
    DMTP_HA_SCAN_MS: '300',
    ...o.env,
  };
  const proc = spawn(process.execPath, entryArgs(path.join(root, 'coordinator', 'main.ts')), {
    stdio: ['ignore', 'pipe', 'inherit'],
    cwd: root,
    env,
  });
  const exited = new Promise<number | string>((resolve) =>
    proc.once('exit', (code, signal) => resolve(code ?? signal ?? -1)),
  );
  const lines: Record<string, unknown>[] = [];
  const stopWith = async (signal: NodeJS.Signals) => {
    if (proc.exitCode === null && proc.signalCode === null) {
      if (signal === 'SIGTERM') proc.kill('SIGCONT');
      proc.kill(signal);
    }
    const t = setTimeout(() => proc.kill('SIGKILL'), 8_000);
    await exited;
    clearTimeout(t);
  };
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`coordinator ${o.id} was not ready within ${o.readyTimeoutMs ?? 30_000} ms`));
    }, o.readyTimeoutMs ?? 30_000);
    const early = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`coordinator ${o.id} exited (${code}) before it was ready`));
    };
    proc.once('exit', early);
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      let nl: number;
      while ((nl = out.indexOf('\n')) >= 0) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        if (!line.startsWith('{')) continue;
        let parsed: Record<string, unknown>;
        try {
          parsed = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        lines.push(parsed);
        if (parsed.ready === true) {
          clearTimeout(timer);
          proc.off('exit', early);
          resolve({
            id: o.id,
            proc,
            address: String(parsed.address),
            pid: proc.pid!,
            lines,
            exited,
            stop: () => stopWith('SIGTERM'),
            kill: () => stopWith('SIGKILL'),
          });
        }
      }
    });
  });
}

/** host:port answering for owner's transactions now (the route key), or undefined. */
export async function ownerRoute(etcd: Etcd3, prefix: string, owner: string): Promise<string | undefined> {
  const v = await etcd.get(`${prefix}/services/dmtp-coordinator-owner/${owner}`).string();
  return v ? (JSON.parse(v) as { address: string }).address : undefined;
}

/** Records left in the shared log (undecided or unfinished transactions), by key. */
export async function logRecords(etcd: Etcd3, prefix: string): Promise<string[]> {
  return etcd.getAll().prefix(`${prefix}/tx/`).keys();
}

export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs: number,
  everyMs = 100,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
