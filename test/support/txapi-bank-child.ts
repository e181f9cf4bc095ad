/**
 * Starts the bank participant (test/support/txapi-bank-main.ts) as a child process, as the fault tests do: it
 * resolves with the process once it serves, and rejects if it exits before that. The caller stops it by its own
 * handle (SIGTERM, or SIGKILL for a crash).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import type { BankSpec } from './txapi-bank-main';
import { entryArgs } from './node-entry';

const BANK_MAIN = path.join(__dirname, 'txapi-bank-main.ts');

export function spawnBank(spec: BankSpec, logLevel = 'warn'): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, entryArgs(BANK_MAIN), {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: {
        ...process.env,
        BANK: JSON.stringify(spec),
        DMTP_LOG_LEVEL: process.env.DMTP_LOG_LEVEL ?? logLevel,
      },
    });
    let out = '';
    const onData = (d: Buffer) => {
      out += d.toString();
      if (!out.includes('"ready":true')) return;
      proc.stdout!.off('data', onData);
      proc.stdout!.resume();
      proc.off('exit', early);
      resolve(proc);
    };
    const early = (code: number | null) => reject(new Error(`bank exited (${code}) before it was ready`));
    proc.stdout!.on('data', onData);
    proc.once('exit', early);
  });
}
