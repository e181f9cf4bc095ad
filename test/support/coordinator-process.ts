/**
 * Runs coordinator/main.ts in a child process (node --import tsx, one process, so a SIGKILL reaches the
 * coordinator itself) and stops or kills it by its handle. Used by the coordinator's fault tests.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { ETCD_ENDPOINTS } from './env';
import { entryArgs } from './node-entry';

export interface CoordinatorChild {
  proc: ChildProcess;
  address: string;
  id: string;
  /** Resolves with the exit code (or the signal name) once the process is gone. */
  exited: Promise<number | string>;
  /** Graceful: SIGTERM and wait (SIGKILL after 5 s). */
  stop(): Promise<void>;
  /** kill -9, and wait for the exit. */
  kill(): Promise<void>;
}

export interface CoordinatorChildOptions {
  id: string;
  prefix: string;
  failpoint?: string;
  /** Extra environment (DMTP_PREPARE_TIMEOUT_MS, DMTP_EVENT_SINK, …). */
  env?: Record<string, string>;
}

export function spawnCoordinator(o: CoordinatorChildOptions): Promise<CoordinatorChild> {
  const root = path.join(__dirname, '..', '..');
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ETCD_ENDPOINTS: ETCD_ENDPOINTS.join(','),
    DMTP_ETCD_PREFIX: o.prefix,
    DMTP_COORDINATOR_ID: o.id,
    DMTP_FAILPOINT: o.failpoint ?? '',
    DMTP_LOG_LEVEL: process.env.DMTP_LOG_LEVEL ?? 'error',
    DMTP_EVENT_SINK: 'none',
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
  const stopWith = async (signal: NodeJS.Signals) => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
    const t = setTimeout(() => proc.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(t);
  };
  return new Promise((resolve, reject) => {
    let out = '';
    const early = (code: number | null) =>
      reject(new Error(`the coordinator exited (${code}) before it was ready`));
    proc.once('exit', early);
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.startsWith('{"ready":true'));
      if (!line) return;
      proc.off('exit', early);
      proc.stdout!.removeAllListeners('data');
      proc.stdout!.resume();
      const info = JSON.parse(line) as { address: string; id: string };
      resolve({
        proc,
        address: info.address,
        id: info.id,
        exited,
        stop: () => stopWith('SIGTERM'),
        kill: () => stopWith('SIGKILL'),
      });
    });
  });
}
