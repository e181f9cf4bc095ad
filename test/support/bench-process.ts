/**
 * Benchmark helpers: a TypeScript entry run as its own process (through tsx, or compiled when the benchmarks run
 * compiled: node-entry.ts; one process, so a signal reaches it), ready when it prints a `{"ready":true,…}` line on
 * stdout (killed if it has not within `readyTimeoutMs`); stopped by its handle, and its resident memory read from
 * /proc/<pid>/status (VmRSS).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { entryArgs } from './node-entry';

export interface ReadyChild<Info> {
  proc: ChildProcess;
  info: Info;
  exited: Promise<number | string>;
  /** SIGTERM and wait (SIGKILL after `graceMs`). */
  stop(graceMs?: number): Promise<void>;
}

export const ROOT = path.join(__dirname, '..', '..');

export function spawnReady<Info>(
  entry: string,
  env: Record<string, string>,
  nodeArgs: string[] = [],
  readyTimeoutMs = 60_000,
): Promise<ReadyChild<Info>> {
  const proc = spawn(process.execPath, [...nodeArgs, ...entryArgs(path.join(ROOT, entry))], {
    stdio: ['ignore', 'pipe', 'inherit'],
    cwd: ROOT,
    env: { ...process.env, DMTP_LOG_LEVEL: process.env.DMTP_LOG_LEVEL ?? 'error', ...env },
  });
  const exited = new Promise<number | string>((resolve) =>
    proc.once('exit', (code, signal) => resolve(code ?? signal ?? -1)),
  );
  const stop = async (graceMs = 5_000) => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(t);
  };
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      proc.off('exit', early);
      proc.kill('SIGKILL');
      reject(new Error(`${entry} was not ready within ${readyTimeoutMs} ms (killed)`));
    }, readyTimeoutMs);
    const early = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`${entry} exited (${code}) before it was ready`));
    };
    proc.once('exit', early);
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.startsWith('{"ready":true'));
      if (!line) return;
      clearTimeout(timer);
      proc.off('exit', early);
      proc.stdout!.removeAllListeners('data');
      proc.stdout!.resume();
      resolve({ proc, info: JSON.parse(line) as Info, exited, stop });
    });
  });
}

/**
 * Awaits children started together. Each one that started is handed to `record` (the caller's list of what to
 * stop) even when a sibling failed, and only then is the first failure thrown: with Promise.all, a sibling
 * still starting when another failed was never recorded, and kept running after the caller's cleanup.
 */
export async function allStarted<T>(starts: Promise<T>[], record: (child: T) => void): Promise<T[]> {
  const settled = await Promise.allSettled(starts);
  const started: T[] = [];
  for (const s of settled) {
    if (s.status === 'fulfilled') {
      record(s.value);
      started.push(s.value);
    }
  }
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  return started;
}

/** Resident memory of a process in MB (VmRSS of /proc/<pid>/status), NaN when it cannot be read. */
export function rssMb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** A free TCP port on 127.0.0.1 (for a server that must know its address before it listens). */
export { freePort } from '../../common';

/** CPU time (user + system) a process used so far, in ms, from /proc/<pid>/stat; NaN when unreadable. */
export function cpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // utime, stime in clock ticks (USER_HZ 100)
  } catch {
    return NaN;
  }
}
