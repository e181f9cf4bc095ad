/**
 * Runs the real `dmtp` command as a child process (`node bin/dmtp.js …`), the way a user does, and collects
 * its exit code, stdout, stderr and how long it took. `startCli` is for commands that keep running.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { ETCD_ENDPOINTS, KAFKA_BROKERS } from '../../support/env';

export const DMTP = path.resolve(__dirname, '../../../bin/dmtp.js');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** The child's environment: the test services, and none of the caller's DMTP_* settings. */
export function cliEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('DMTP_')) env[k] = v;
  return {
    ...env,
    ETCD_ENDPOINTS: ETCD_ENDPOINTS.join(','),
    KAFKA_BROKERS: KAFKA_BROKERS.join(','),
    ...extra,
  };
}

export function startCli(args: string[], extra: Record<string, string> = {}): ChildProcess {
  return spawn(process.execPath, [DMTP, ...args], { env: cliEnv(extra), stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Collects a started child's output until it exits (killed after `timeoutMs`, which fails the result). */
export function collect(child: ChildProcess, timeoutMs = 20_000): Promise<CliResult> {
  const start = Date.now();
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: Date.now() - start });
    });
  });
}

export function runCli(
  args: string[],
  extra: Record<string, string> = {},
  timeoutMs?: number,
): Promise<CliResult> {
  return collect(startCli(args, extra), timeoutMs);
}

/** Output lines that are not the structured log lines DMTP writes to stderr. */
export function plainLines(text: string): string[] {
  return text.split('\n').filter((l) => l && !l.startsWith('{"t":'));
}
