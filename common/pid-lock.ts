/**
 * One process per file: `<file>.lock` names the owning process id, created exclusively. A lock whose process is
 * gone (a crash, a kill -9) is taken over; one whose process is alive — or a second open in this process, which
 * a pid cannot tell apart — is refused with the error `refuse` makes, naming the owner.
 */
import { promises as fs } from 'node:fs';
import { logger } from './log';

const log = logger('common:pid-lock');
/** Files locked by this process. */
const heldHere = new Set<string>();

export class PidLock {
  readonly lockFile: string;
  private held = false;

  constructor(
    readonly file: string,
    private readonly refuse: (message: string) => Error,
  ) {
    this.lockFile = `${file}.lock`;
  }

  /** Takes the lock (the file's folder must exist). */
  async acquire(): Promise<void> {
    if (this.held) return;
    if (heldHere.has(this.file)) throw this.refuse(`${this.file} is already open in this process`);
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await fs.writeFile(this.lockFile, String(process.pid), { flag: 'wx' });
        heldHere.add(this.file);
        this.held = true;
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const pid = Number((await fs.readFile(this.lockFile, 'utf8').catch(() => '')).trim());
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
        throw this.refuse(`${this.file} is in use by process ${pid} (${this.lockFile})`);
      }
      log.warn('taking over the lock of a process that is gone', { file: this.lockFile, pid });
      await fs.rm(this.lockFile, { force: true });
    }
    throw this.refuse(`${this.file}: could not take ${this.lockFile}`);
  }

  async release(): Promise<void> {
    if (!this.held) return;
    this.held = false;
    heldHere.delete(this.file);
    await fs.rm(this.lockFile, { force: true });
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
