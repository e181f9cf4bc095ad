/**
 * The two durable-file moves the append-only stores share (the participant's file branch store, the
 * coordinator's file transaction log): append a group of lines with one fdatasync, and replace a file's content
 * atomically (write a temporary file, fsync it, rename it over the old one, fsync the folder).
 */
import { fdatasync, promises as fs, write } from 'node:fs';
import * as path from 'node:path';

/**
 * Writes all of `buf` at the end of the file and fdatasyncs it: one promise for the group, on the callback API
 * (cheaper per group than FileHandle's write + datasync on the hot path).
 */
export function writeAndSync(fd: number, buf: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const from = (offset: number): void => {
      write(fd, buf, offset, buf.length - offset, null, (err, n) => {
        if (err) return reject(err);
        if (offset + n < buf.length) return from(offset + n);
        fdatasync(fd, (e) => (e ? reject(e) : resolve()));
      });
    };
    from(0);
  });
}

/**
 * Creates `dir` and its missing parents. Not `fs.mkdir(…, {recursive: true})`: on some paths (e.g. under /proc)
 * Node 20's recursive mkdir never returns; this gives up with the error of the level that cannot be made.
 */
export async function ensureDir(dir: string): Promise<void> {
  try {
    await fs.mkdir(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return;
    const parent = path.dirname(dir);
    if (code !== 'ENOENT' || parent === dir) throw err;
    await ensureDir(parent);
    await fs.mkdir(dir).catch((again: NodeJS.ErrnoException) => {
      if (again.code !== 'EEXIST') throw again;
    });
  }
}

/** The file's text, or '' when there is no such file yet (any other error is thrown). */
export async function readTextIfAny(file: string): Promise<string> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

/** Replaces `file` with `content` all at once: a crash leaves either the old file or the new one, whole. */
export async function replaceFileDurably(file: string, content: string): Promise<void> {
  const tmp = `${file}.compact`;
  const fh = await fs.open(tmp, 'w');
  try {
    await fh.write(content);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, file);
  const dir = await fs.open(path.dirname(file), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

interface Pending {
  line: string;
  resolve: () => void;
  reject: (err: unknown) => void;
}

export interface GroupCommitOptions {
  /** The open file's descriptor (a rewrite may have replaced it). */
  fd(): number;
  /** Asked between groups: is a rewrite due, with `lines` lines in the file? */
  compactDue?(lines: number): boolean;
  /** Rewrites the file (and reopens it); resolves with its line count after. */
  compact?(): Promise<number>;
  /** A write failed (the file is broken for good) or a compaction did (the old file is still whole). */
  onError?(what: 'write' | 'compaction', err: unknown): void;
}

/**
 * Group commit of lines to an append-only file: every line appended while a group is being written goes into
 * the next group, with one fdatasync for all of it. Between groups, when `compactDue` says so, `compact`
 * rewrites the file, so no append interleaves with a rewrite. A failed write breaks it for good: memory is
 * ahead of the file then, so it refuses everything after rather than answer from a lie.
 */
export class GroupCommitFile {
  /** Lines in the file (set it after reading the file; a compaction sets it too). */
  lines = 0;
  /** Groups written so far. */
  groups = 0;
  private queue: Pending[] = [];
  private running: Promise<void> | undefined;
  private failure: unknown;

  constructor(private readonly o: GroupCommitOptions) {}

  /** The error of the write that broke it, if one did. */
  get broken(): unknown {
    return this.failure;
  }

  /** Resolves once `line` (ending with '\n') is durable. */
  append(line: string): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ line, resolve, reject });
      this.running ??= this.loop();
    });
  }

  /** Resolves once every line appended before this call is durable (and a rewrite under way is done). */
  settled(): Promise<void> {
    return this.running ? this.append('') : Promise.resolve();
  }

  /** Resolves when nothing is being written or rewritten. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  /** Runs a rewrite outside the loop: after the group in flight, and before any later one. */
  async exclusive(rewrite: () => Promise<number>): Promise<void> {
    // Checked and taken in the same turn, before the rewrite starts: a line appended from then on (even by the
    // rewrite itself) waits for it and goes to the new file.
    while (this.running) await this.running;
    let release!: () => void;
    this.running = new Promise<void>((r) => (release = r));
    try {
      this.lines = await rewrite();
    } finally {
      this.next();
      release();
    }
  }

  private next(): void {
    this.running = undefined;
    if (this.queue.length > 0 && !this.failure) this.running = this.loop();
  }

  private async loop(): Promise<void> {
    // Never finish synchronously: `running` is assigned this promise before its `finally` clears it.
    await null;
    try {
      for (;;) {
        if (this.queue.length > 0) {
          const group = this.queue.splice(0);
          const text = group.map((p) => p.line).join('');
          try {
            if (text) await writeAndSync(this.o.fd(), Buffer.from(text));
          } catch (err) {
            this.failure = err;
            this.o.onError?.('write', err);
            for (const p of [...group, ...this.queue.splice(0)]) p.reject(err);
            return;
          }
          for (const p of group) if (p.line) this.lines++;
          this.groups++;
          for (const p of group) p.resolve();
        } else if (this.o.compactDue?.(this.lines)) {
          try {
            this.lines = await this.o.compact!();
          } catch (err) {
            this.o.onError?.('compaction', err); // tried again after the next group
            return;
          }
        } else {
          return;
        }
      }
    } finally {
      this.next();
    }
  }
}
