/**
 * One process per file: `<file>.lock`, created atomically (a complete temporary file hard-linked into place, so
 * it is never seen half-written) and naming its holder: a random token, its pid, host, boot and pid namespace.
 * While held, the holder touches it every `heartbeatMs` and checks that it is still its own.
 *
 * A lock found in place is the holder's as long as it may be alive:
 * - a holder on this host, boot and pid namespace is alive exactly when its pid is (a kill -9 is taken over at
 *   once, a live process refused at once);
 * - any other (another container sharing the volume, whose pids mean nothing here; an unreadable lock) only
 *   once its lock has not been touched for `staleMs`: `acquire()` watches it that long before refusing.
 * A stale lock is removed by one contender at a time (under `<lock>.takeover`, and only while it is still the
 * one judged stale), then each contender tries to link its own: one wins. A holder that finds its lock gone or another's
 * calls `onLost` and should stop writing. A second open in this process is refused with the error `refuse`
 * makes, as is a lock in use, naming its holder.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs, readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { logger } from './log';

const log = logger('common:pid-lock');
/** Files locked by this process. */
const heldHere = new Set<string>();

export interface PidLockOptions {
  /** How long an unrefreshed lock of a holder this process cannot check by pid is taken to be alive. */
  staleMs?: number;
  /** How often the holder touches its lock (and checks it is still its own). */
  heartbeatMs?: number;
  /** The lock was found gone or another's while held: the holder must stop writing. */
  onLost?: (err: Error) => void;
}

export const PID_LOCK_DEFAULTS = Object.freeze({ staleMs: 6_000, heartbeatMs: 1_500 });

interface Holder {
  token: string;
  pid: number;
  host: string;
  boot: string;
  pidns: string;
}

/** This process as a lock names it (boot id and pid namespace: '' where /proc cannot tell). */
const ME: Omit<Holder, 'token'> = {
  pid: process.pid,
  host: hostname(),
  boot: readOr(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()),
  pidns: readOr(() => readlinkSync('/proc/self/ns/pid')),
};

/** The text of a lock held by process `pid` of this host, boot and pid namespace (tests and tools). */
export function lockTextFor(pid: number, token = randomBytes(12).toString('hex')): string {
  return JSON.stringify({ token, ...ME, pid } satisfies Holder);
}

function readOr(read: () => string): string {
  try {
    return read();
  } catch {
    return '';
  }
}

export class PidLock {
  readonly lockFile: string;
  private token: string | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private readonly staleMs: number;
  private readonly heartbeatMs: number;
  /** Set when the lock was found gone or another's while held. */
  lost: Error | undefined;

  constructor(
    readonly file: string,
    private readonly refuse: (message: string) => Error,
    private readonly options: PidLockOptions = {},
  ) {
    this.lockFile = `${file}.lock`;
    this.staleMs = options.staleMs ?? PID_LOCK_DEFAULTS.staleMs;
    this.heartbeatMs = options.heartbeatMs ?? PID_LOCK_DEFAULTS.heartbeatMs;
  }

  /** Takes the lock (the file's folder must exist); waits up to `staleMs` for a holder it cannot check by pid. */
  async acquire(): Promise<void> {
    if (this.token) return;
    if (heldHere.has(this.file)) throw this.refuse(`${this.file} is already open in this process`);
    heldHere.add(this.file);
    try {
      await this.take();
    } catch (err) {
      heldHere.delete(this.file);
      throw err;
    }
    this.lost = undefined;
    this.heartbeat = setInterval(() => void this.beat(), this.heartbeatMs);
    this.heartbeat.unref();
  }

  private async take(): Promise<void> {
    const deadline = Date.now() + this.staleMs + this.heartbeatMs;
    for (;;) {
      const token = randomBytes(12).toString('hex');
      if (await this.create(token)) {
        this.token = token;
        return;
      }
      const found = await this.read();
      if (found === 'gone') continue; // released meanwhile
      const verdict = await this.judge(found);
      if (verdict === 'alive') throw this.refuse(this.inUse(found));
      if (verdict === 'stale') {
        log.warn('taking over the lock of a process that is gone', { file: this.lockFile, holder: found });
        await this.moveAway(found);
        continue;
      }
      // Not checkable by pid and touched recently: it is alive while it keeps being touched.
      if (Date.now() > deadline) throw this.refuse(this.inUse(found));
      await new Promise((r) => setTimeout(r, Math.min(250, this.heartbeatMs)));
    }
  }

  /** Links a complete lock file into place; false when one is there already. */
  private async create(token: string): Promise<boolean> {
    const tmp = `${this.lockFile}.${token}`;
    await fs.writeFile(tmp, lockTextFor(process.pid, token), { flag: 'wx' });
    try {
      await fs.link(tmp, this.lockFile);
      return true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') return false;
      if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP') throw err;
      // No hard links on this file system: created exclusively, then written (a reader that finds it still
      // empty cannot tell its holder, and waits for it to go untouched for staleMs).
      try {
        await fs.writeFile(this.lockFile, lockTextFor(process.pid, token), { flag: 'wx' });
        return true;
      } catch (again) {
        if ((again as NodeJS.ErrnoException).code === 'EEXIST') return false;
        throw again;
      }
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }

  /** The lock in place: its holder (undefined when unreadable), and when it was touched. */
  private async read(): Promise<{ holder?: Holder; text: string; mtimeMs: number } | 'gone'> {
    try {
      const [text, st] = await Promise.all([fs.readFile(this.lockFile, 'utf8'), fs.stat(this.lockFile)]);
      let holder: Holder | undefined;
      try {
        const h = JSON.parse(text) as Partial<Holder> | number;
        if (typeof h === 'number' && Number.isInteger(h) && h > 0) {
          // A bare pid: an earlier DMTP version's lock, which names no namespace and is never touched; judged by
          // its pid as that version did (taking it by age would take a live old process's store).
          holder = { token: '', ...ME, pid: h };
        } else if (typeof h === 'object' && typeof h?.token === 'string' && Number.isInteger(h.pid)) {
          holder = h as Holder;
        }
      } catch {
        holder = undefined;
      }
      return { holder, text, mtimeMs: st.mtimeMs };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'gone';
      throw err;
    }
  }

  private async judge(found: { holder?: Holder; mtimeMs: number }): Promise<'alive' | 'stale' | 'unsure'> {
    const h = found.holder;
    if (h && ME.boot && ME.pidns && h.host === ME.host && h.boot === ME.boot && h.pidns === ME.pidns) {
      // Pids mean the same here: a pid that is ours is an earlier process's (this one never wrote it).
      return h.pid !== process.pid && alive(h.pid) ? 'alive' : 'stale';
    }
    return Date.now() - found.mtimeMs > this.staleMs ? 'stale' : 'unsure';
  }

  /**
   * Removes the lock judged stale, one contender at a time: the one that makes `<lock>.takeover` checks, under it,
   * that the lock is still the stale one (a contender that took over first has linked a fresh one, never removed
   * here) and removes it; every contender then tries to link its own, and one link wins. A marker left by a
   * contender that died on the way is cleared once it is `staleMs` old.
   */
  private async moveAway(judged: { text: string }): Promise<void> {
    const marker = `${this.lockFile}.takeover`;
    try {
      await fs.writeFile(marker, String(process.pid), { flag: 'wx' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const st = await fs.stat(marker).catch(() => undefined);
      if (st && Date.now() - st.mtimeMs > this.staleMs) await fs.rm(marker, { force: true });
      await new Promise((r) => setTimeout(r, 20));
      return; // another contender is at it: look at the lock again
    }
    try {
      const text = await fs.readFile(this.lockFile, 'utf8').catch(() => undefined);
      if (text === judged.text) await fs.rm(this.lockFile, { force: true });
    } finally {
      await fs.rm(marker, { force: true });
    }
  }

  private inUse(found: { holder?: Holder; text: string }): string {
    const h = found.holder;
    const who = h ? `process ${h.pid} on ${h.host}` : `'${found.text.slice(0, 40)}'`;
    return `${this.file} is in use by ${who} (${this.lockFile})`;
  }

  /** Touches the lock, after checking it is still this holder's; calls onLost (once) when it is not. */
  private async beat(): Promise<void> {
    if (!this.token || this.lost) return;
    try {
      const found = await this.read();
      if (found !== 'gone' && found.holder?.token === this.token) {
        const now = new Date();
        await fs.utimes(this.lockFile, now, now);
        return;
      }
      const why = found === 'gone' ? 'was removed' : `is now held by ${this.inUse(found)}`;
      this.lost = this.refuse(`${this.lockFile} ${why} while this process held it`);
      log.error('lost the lock of a file while holding it; stop writing', { file: this.lockFile, why });
      this.options.onLost?.(this.lost);
    } catch (err) {
      log.warn('could not touch a lock file', { file: this.lockFile, err: err as Error });
    }
  }

  /** Stops touching the lock and removes it if it is still this holder's. */
  async release(): Promise<void> {
    const token = this.token;
    if (!token) return;
    this.token = undefined;
    clearInterval(this.heartbeat);
    heldHere.delete(this.file);
    const found = await this.read().catch(() => 'gone' as const);
    if (found !== 'gone' && found.holder?.token === token) await fs.rm(this.lockFile, { force: true });
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
