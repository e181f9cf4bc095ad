/**
 * The append-only file both file stores are built on (the participant's file branch store, the coordinator's file
 * transaction log): `GroupCommitFile` reads the file's complete lines at open, appends lines in groups with one
 * fdatasync per group, and rewrites the whole file atomically (compaction: temporary file, fsync, rename, fsync
 * of the folder) between groups.
 */
import { fdatasync, promises as fs, write } from 'node:fs';
import * as path from 'node:path';
import { logger } from './log';

const log = logger('common:durable-file');

/** Writes all of `buf` at the end of the file and fdatasyncs it: one promise for the group, callback API. */
function writeAndSync(fd: number, buf: Buffer): Promise<void> {
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
async function readTextIfAny(file: string): Promise<string> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

/** Replaces `file` with `content` all at once: a crash leaves either the old file or the new one, whole. */
async function replaceFileDurably(file: string, content: string): Promise<void> {
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
  /** The file; its folder is made when missing. */
  file: string;
  /** Asked between groups: is a rewrite due, with `lines` lines in the file? */
  compactDue?(lines: number): boolean;
  /** What a rewrite writes: the whole content, as lines each ending in '\n'. */
  snapshot?(): string[];
  /** A write failed (the file is broken for good) or a compaction did (the old file is still whole). */
  onError?(what: 'write' | 'compaction', err: unknown): void;
}

/**
 * Group commit of lines to an append-only file: every line appended while a group is being written goes into
 * the next group, with one fdatasync for all of it. Between groups, when `compactDue` says so, the file is
 * rewritten from `snapshot`, so no append interleaves with a rewrite. A failed write breaks it for good: memory
 * is ahead of the file then, so it refuses everything after rather than answer from a lie.
 */
export class GroupCommitFile {
  /** Lines in the file. */
  lines = 0;
  /** Groups written, and rewrites done, so far. */
  groups = 0;
  rewrites = 0;
  private fd: fs.FileHandle | undefined;
  private queue: Pending[] = [];
  private running: Promise<void> | undefined;
  private failure: unknown;

  constructor(private readonly o: GroupCommitOptions) {}

  /**
   * Makes the folder, reads the file's lines and opens it for appending. An acknowledged line ends with its
   * newline, so a last line without one is torn (a crash mid-write) and left out, even when what is left of it
   * would parse.
   */
  async open(): Promise<string[]> {
    await ensureDir(path.dirname(this.o.file));
    const text = await readTextIfAny(this.o.file);
    const lines = text.split('\n');
    const torn = lines.pop();
    const fd = await fs.open(this.o.file, 'a');
    if (torn) {
      // Cut it off before appending: the next acknowledged line must start a line of its own, not continue the
      // fragment (which would make both unreadable at the next open).
      log.warn('dropping a torn last line (a write never acknowledged)', { file: this.o.file });
      try {
        await fd.truncate(Buffer.byteLength(text) - Buffer.byteLength(torn));
        await fd.datasync();
      } catch (err) {
        await fd.close();
        throw err;
      }
    }
    this.fd = fd;
    this.lines = lines.length;
    return lines;
  }

  /** Open, and not closed since. */
  get isOpen(): boolean {
    return this.fd !== undefined;
  }

  /** Lets what is being written finish, then closes the file. */
  async close(): Promise<void> {
    await this.idle();
    const fd = this.fd;
    this.fd = undefined;
    await fd?.close();
  }

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

  /** Rewrites the file from `snapshot` now: after the group in flight, and before any later one. */
  async rewrite(): Promise<void> {
    // Checked and taken in the same turn, before the snapshot: a line appended from then on (even while the
    // snapshot is taken) waits for the rewrite and goes to the new file.
    while (this.running) await this.running;
    let release!: () => void;
    this.running = new Promise<void>((r) => (release = r));
    try {
      await this.rewriteNow();
    } finally {
      this.next();
      release();
    }
  }

  private async rewriteNow(): Promise<void> {
    const lines = this.o.snapshot!();
    await replaceFileDurably(this.o.file, lines.join(''));
    await this.fd!.close();
    this.fd = await fs.open(this.o.file, 'a');
    this.lines = lines.length;
    this.rewrites++;
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
            if (text) await writeAndSync(this.fd!.fd, Buffer.from(text));
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
            await this.rewriteNow();
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
