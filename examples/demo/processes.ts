/**
 * The demo's child processes: each example service runs as `node --import tsx examples/<file>.ts`, its stderr
 * (JSON log lines) in a file of its own, and is known to the demo only by its handle — stopped with SIGTERM
 * (SIGKILL after a grace period), or killed with SIGKILL on purpose.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const EXAMPLES = path.resolve(__dirname, '..');

/** Every child spawned and not yet exited, ready or not: a failed start-up must not leave one behind. */
const spawned = new Set<ChildProcess>();

/** Stops the children still starting when the demo gave up (SIGTERM, SIGKILL after `graceMs`). */
export async function stopStragglers(graceMs = 5_000): Promise<void> {
  await Promise.all(
    [...spawned].map(async (proc) => {
      const gone = new Promise((resolve) => proc.once('exit', resolve));
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), graceMs);
      await gone;
      clearTimeout(t);
    }),
  );
}

/** A second Ctrl-C: every child still running is killed at once (SIGKILL), no grace. */
export function killAll(): void {
  for (const proc of spawned) proc.kill('SIGKILL');
}

export interface ServiceSpec {
  /** Shown in the demo's output and names the log file, e.g. "inventory-1". */
  name: string;
  /** examples/<file>.ts */
  file: string;
  env: Record<string, string>;
}

export class ServiceProcess {
  readonly exited: Promise<number | string>;
  /** Set when the demo stops or kills it (an exit without it is a crash). */
  expectedExit = false;

  private constructor(
    readonly spec: ServiceSpec,
    readonly proc: ChildProcess,
    readonly address: string,
    /** host:port of its /metrics endpoint, when it serves one. */
    readonly metrics: string | undefined,
    exited: Promise<number | string>,
  ) {
    this.exited = exited;
  }

  get pid(): number {
    return this.proc.pid ?? -1;
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Starts the service and resolves once it printed its ready line (rejects if it exits first or hangs). */
  static start(spec: ServiceSpec, logDir: string, readyWithinMs = 60_000): Promise<ServiceProcess> {
    fs.mkdirSync(logDir, { recursive: true });
    const log = fs.openSync(path.join(logDir, `${spec.name}.log`), 'a');
    const proc = spawn(process.execPath, ['--import', 'tsx', path.join(EXAMPLES, spec.file)], {
      cwd: path.resolve(EXAMPLES, '..'),
      env: { ...process.env, DMTP_LOG_LEVEL: process.env.DMTP_LOG_LEVEL || 'warn', ...spec.env },
      stdio: ['ignore', 'pipe', log],
    });
    fs.closeSync(log); // the child has its own copy
    spawned.add(proc);
    proc.once('exit', () => spawned.delete(proc));
    const exited = new Promise<number | string>((resolve) =>
      proc.once('exit', (code, signal) => resolve(code ?? signal ?? -1)),
    );
    return new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => {
        proc.kill('SIGKILL');
        reject(
          new Error(`${spec.name} did not start within ${readyWithinMs} ms (see ${logDir}/${spec.name}.log)`),
        );
      }, readyWithinMs);
      const early = (code: number | null, signal: string | null) => {
        clearTimeout(timer);
        reject(
          new Error(
            `${spec.name} exited (${code ?? signal}) before it was ready; see ${logDir}/${spec.name}.log`,
          ),
        );
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
        const { address, metrics } = JSON.parse(line) as { address: string; metrics?: string };
        resolve(new ServiceProcess(spec, proc, address, metrics, exited));
      });
    });
  }

  /** SIGTERM (the service deregisters and drains), SIGKILL after `graceMs`. */
  async stop(graceMs = 8_000): Promise<void> {
    this.expectedExit = true;
    if (!this.running) return;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(t);
  }

  /** kill -9: no deregistration, no draining, open transactions cut mid-way. */
  async kill(): Promise<void> {
    this.expectedExit = true;
    if (this.running) this.proc.kill('SIGKILL');
    await this.exited;
  }
}
