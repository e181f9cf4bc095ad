/** Runs test/support/mux-echo-server.ts in a child process (via tsx) and stops or kills it by its handle. */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { entryArgs } from './node-entry';

export interface EchoChild {
  proc: ChildProcess;
  /** gRPC address (mux + unary echo); `moleculerPort` when started with one. */
  info: { grpc: string; moleculerPort?: number };
  /** Graceful: closes its stdin and waits for it to exit (SIGKILL after 3 s). */
  stop(): Promise<void>;
  /** `kill -9`, and waits for the exit. */
  kill(): Promise<void>;
}

export function startEchoChild(opts: { moleculerPort?: number } = {}): Promise<EchoChild> {
  const root = path.join(__dirname, '..', '..');
  const args = entryArgs(path.join(__dirname, 'mux-echo-server.ts'));
  if (opts.moleculerPort !== undefined) args.push('--moleculer', String(opts.moleculerPort));
  const proc = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'inherit'], cwd: root });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const stopWith = async (how: () => void) => {
    if (proc.exitCode === null && proc.signalCode === null) how();
    const t = setTimeout(() => proc.kill('SIGKILL'), 3_000);
    await exited;
    clearTimeout(t);
  };
  return new Promise((resolve, reject) => {
    let out = '';
    const early = () => reject(new Error('the echo server exited before it was ready'));
    proc.once('exit', early);
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /READY (.*)\n/.exec(out);
      if (!m) return;
      proc.off('exit', early);
      proc.stdout!.removeAllListeners('data');
      proc.stdout!.resume();
      resolve({
        proc,
        info: JSON.parse(m[1]),
        stop: () => stopWith(() => proc.stdin!.end()),
        kill: () => stopWith(() => proc.kill('SIGKILL')),
      });
    });
  });
}
