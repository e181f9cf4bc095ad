/**
 * The append-only file both file stores are built on (the participant's file branch store, the coordinator's file
 * transaction log): `GroupCommitFile` reads the file's complete lines at open, appends lines in groups with one
 * fdatasync per group, and between groups either rewrites the whole file atomically (compaction: temporary file,
 * fsync, rename, fsync of the folder) or goes on in a new file (a segment, for a store that drops old segments
 * whole instead of rewriting). Files are read and rewritten in chunks: their size is not bound by the longest
 * string V8 can make (~512 MiB), so a store that grew large still opens.
 */
import { fdatasync, promises as fs, write } from 'node:fs';
import * as path from 'node:path';
import { InternalError } from './errors';
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
  const parent = path.dirname(dir);
  try {
    await fs.mkdir(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return;
    if (code !== 'ENOENT' || parent === dir) throw err;
    await ensureDir(parent);
    try {
      await fs.mkdir(dir);
    } catch (again) {
      if ((again as NodeJS.ErrnoException).code === 'EEXIST') return;
      throw again;
    }
  }
  // Made here: its entry in the parent must survive a power loss as well as what is written in it.
  await syncDir(parent);
}

/** Bytes read per chunk when a file is read or written in parts. */
const CHUNK_BYTES = 1 << 20;

export interface ReadLinesResult {
  /** Complete lines read (each ended with '\n'). */
  lines: number;
  /** Bytes after the last '\n' (a torn last line), 0 when none. */
  tornBytes: number;
  /** The file's size in bytes (0 when there is no such file). */
  size: number;
}

/**
 * Calls `onLine` with each complete line of `file` (without its '\n'), in order, reading it in chunks; a last line
 * without its newline is not passed on (see `tornBytes`). No such file reads as empty; any other error is thrown,
 * as is whatever `onLine` throws.
 */
export async function readLines(file: string, onLine: (line: string) => void): Promise<ReadLinesResult> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { lines: 0, tornBytes: 0, size: 0 };
    throw err;
  }
  try {
    let lines = 0;
    let size = 0;
    let rest = Buffer.alloc(0); // the start of a line continued in the next chunk
    for (;;) {
      const chunk = Buffer.allocUnsafe(CHUNK_BYTES);
      const { bytesRead } = await fh.read(chunk, 0, CHUNK_BYTES, null);
      if (bytesRead === 0) break;
      size += bytesRead;
      const buf =
        rest.length > 0 ? Buffer.concat([rest, chunk.subarray(0, bytesRead)]) : chunk.subarray(0, bytesRead);
      let start = 0;
      for (let nl = buf.indexOf(10, start); nl !== -1; nl = buf.indexOf(10, start)) {
        onLine(buf.toString('utf8', start, nl));
        lines++;
        start = nl + 1;
      }
      rest = Buffer.from(buf.subarray(start)); // a copy: the chunk is not kept alive by it
    }
    return { lines, tornBytes: rest.length, size };
  } finally {
    await fh.close();
  }
}

/**
 * Writes `lines` to `fh` in parts of about a chunk (one string of the whole content could exceed V8's longest
 * string), awaiting each: the event loop goes on between parts. Returns how many lines were written.
 */
async function writeLines(fh: fs.FileHandle, lines: Iterable<string>): Promise<number> {
  let n = 0;
  let part = '';
  for (const line of lines) {
    part += line;
    n++;
    if (part.length >= CHUNK_BYTES) {
      await fh.write(part);
      part = '';
    }
  }
  if (part) await fh.write(part);
  return n;
}

/** `bytes` bytes of `file` from `at`, as text. */
async function readFragment(file: string, at: number, bytes: number): Promise<string> {
  const fh = await fs.open(file, 'r');
  try {
    const buf = Buffer.alloc(bytes);
    const { bytesRead } = await fh.read(buf, 0, bytes, at);
    return buf.toString('utf8', 0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** fsyncs a folder: a file made, renamed or removed in it is then durable as such. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** A line to append, or a step to run between groups (`task`) at its place in the queue. */
interface Pending {
  line: string;
  task?: () => Promise<void>;
  /** With the number of the file the line went to (see `switchTo`). */
  resolve: (file: number) => void;
  reject: (err: unknown) => void;
}

export interface GroupCommitOptions {
  /** The file; its folder is made when missing. */
  file: string;
  /** The number `append` resolves with for lines written to `file` (default 0); see `switchTo`. */
  fileNumber?: number;
  /** Asked between groups: is a compaction due, with `lines` lines in the file? */
  compactDue?(lines: number): boolean;
  /**
   * What a rewrite writes: the whole content, as lines each ending in '\n', produced as they are written. A
   * compaction (`compactDue`) reads it while appends go on, so it may see the state part before and part after
   * some of them; every line appended meanwhile is written after it, which makes the result right where the
   * last line of a record wins (both stores).
   */
  snapshot?(): Iterable<string>;
  /** A write failed (the file is broken for good) or a compaction did (the old file is still whole). */
  onError?(what: 'write' | 'compaction', err: unknown): void;
  /**
   * Could `fragment` (the start of what follows the last newline) be a line of this file cut by a crash? What
   * could not is refused at open, never cut off: the file is not one of ours (a mistyped path), or damaged.
   */
  tornLine?(fragment: string): boolean;
}

/**
 * Group commit of lines to an append-only file: every line appended while a group is being written goes into
 * the next group, with one fdatasync for all of it. When `compactDue` says so (asked when nothing is queued),
 * the file is compacted while appends go on: `snapshot` is written to a temporary file in parts, then, between
 * two groups, the lines appended since it began are written after it, it is fsynced and renamed over the file,
 * and appending goes on there — appends wait only for that last step, not for the copy. `rewrite` (the whole
 * rewrite at once) and `switchTo` (appending goes on in another file) take their place in the queue of lines.
 * A failed write breaks it for good: memory is ahead of the file then, so it refuses everything after rather
 * than answer from a lie.
 */
export class GroupCommitFile {
  /** Lines in the file appended to now. */
  lines = 0;
  /** Groups written, and rewrites done, so far. */
  groups = 0;
  rewrites = 0;
  private fd: fs.FileHandle | undefined;
  private file: string;
  private fileNumber: number;
  private queue: Pending[] = [];
  private running: Promise<void> | undefined;
  /** A compaction under way, and the text of the groups written since it began (they follow the snapshot). */
  private compaction: Promise<void> | undefined;
  private since: { text: string[]; lines: number } | undefined;
  /** Bumped by a rewrite or a switch: a compaction begun before one is dropped (its file is not the file). */
  private epoch = 0;
  private failure: unknown;
  /** close() began: what was queued before is written, nothing new is taken. */
  private closing = false;

  constructor(private readonly o: GroupCommitOptions) {
    this.file = o.file;
    this.fileNumber = o.fileNumber ?? 0;
  }

  /**
   * Makes the folder, passes the file's lines to `onLine` in order (read in chunks) and opens it for appending.
   * An acknowledged line ends with its newline, so a last line without one is torn (a crash mid-write) and left
   * out, even when what is left of it would parse. What `onLine` throws fails the open.
   */
  async open(onLine: (line: string, index: number) => void = () => undefined): Promise<void> {
    await ensureDir(path.dirname(this.file));
    let index = 0;
    const read = await readLines(this.file, (line) => onLine(line, index++));
    if (read.tornBytes > 0 && this.o.tornLine) {
      const fragment = await readFragment(
        this.file,
        read.size - read.tornBytes,
        Math.min(read.tornBytes, 64),
      );
      if (!this.o.tornLine(fragment)) {
        throw new InternalError(
          `${this.file} ends with ${read.tornBytes} bytes that are no line of this file cut by a crash ` +
            `('${fragment.replace(/[^ -~]/g, '?').slice(0, 40)}'): it may not be this kind of file, or it is ` +
            'damaged; nothing was changed',
          { details: { file: this.file } },
        );
      }
    }
    const fd = await fs.open(this.file, 'a');
    // A file made here: its folder's entry must be durable before any line in it is acknowledged.
    if (read.size === 0)
      await syncDir(path.dirname(this.file)).catch(async (err: unknown) => {
        await fd.close();
        throw err;
      });
    if (read.tornBytes > 0) {
      // Cut it off before appending: the next acknowledged line must start a line of its own, not continue the
      // fragment (which would make both unreadable at the next open).
      log.warn('dropping a torn last line (a write never acknowledged)', { file: this.file });
      try {
        await fd.truncate(read.size - read.tornBytes);
        await fd.datasync();
      } catch (err) {
        await fd.close();
        throw err;
      }
    }
    this.fd = fd;
    this.lines = read.lines;
  }

  /** Open, and not closing or closed since. */
  get isOpen(): boolean {
    return this.fd !== undefined && !this.closing;
  }

  /** Lets what is queued be written, then closes the file; an append or switch asked for from now on fails. */
  async close(): Promise<void> {
    this.closing = true;
    await this.idle();
    const fd = this.fd;
    this.fd = undefined;
    await fd?.close();
  }

  /** The error of the write that broke it, if one did. */
  get broken(): unknown {
    return this.failure;
  }

  /** Resolves once `line` (ending with '\n') is durable, with the number of the file it is in (see `switchTo`). */
  append(line: string): Promise<number> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closing) return Promise.reject(this.closedError());
    return new Promise<number>((resolve, reject) => {
      this.queue.push({ line, resolve, reject });
      this.running ??= this.loop();
    });
  }

  /** Resolves once every line appended before this call is durable (and a rewrite under way is done). */
  async settled(): Promise<void> {
    if (this.running) await (this.closing ? this.idle() : this.append(''));
  }

  /** Resolves when nothing is being written, rewritten or compacted. */
  async idle(): Promise<void> {
    while (this.running || this.compaction) await (this.running ?? this.compaction);
  }

  /**
   * Appends go on in `file` (made, and its folder fsynced, so it stays) once the lines appended before this call
   * are written; `append` then resolves with `fileNumber`. The file before is closed, whole.
   */
  async switchTo(file: string, fileNumber: number): Promise<void> {
    await this.between(async () => {
      const fd = await fs.open(file, 'a');
      try {
        await syncDir(path.dirname(file));
      } catch (err) {
        await fd.close();
        throw err;
      }
      const old = this.fd!;
      this.fd = fd;
      this.file = file;
      this.fileNumber = fileNumber;
      this.lines = 0;
      this.epoch++;
      await old.close();
    });
  }

  /**
   * Rewrites the file from `snapshot`: after the lines appended before this call, before any appended later. The
   * snapshot is taken when the rewrite's turn comes, so it may already hold changes whose lines are queued behind
   * it; those are then appended again (harmless where the last line of a record wins, as in both stores).
   */
  async rewrite(): Promise<void> {
    await this.between(() => this.rewriteNow());
  }

  /**
   * Runs `task` between groups, at its place in the queue: after the lines appended before, before any appended
   * later (even while it runs). Never starved by a steady stream of appends, as waiting for the writer to go
   * idle would be.
   */
  private between(task: () => Promise<void>): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closing) return Promise.reject(this.closedError());
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ line: '', task, resolve: () => resolve(), reject });
      this.running ??= this.loop();
    });
  }

  private closedError(): Error {
    return new Error(`${this.file} is closed`);
  }

  private async rewriteNow(): Promise<void> {
    this.epoch++;
    const tmp = `${this.file}.compact`;
    const fh = await fs.open(tmp, 'w');
    try {
      const lines = await writeLines(fh, this.o.snapshot!());
      await fh.sync();
      await this.install(fh, tmp, this.file, lines);
    } finally {
      if (this.fd !== fh) await fh.close().catch(() => undefined);
    }
  }

  /**
   * The compaction `compactDue` asked for, beside the appends: the snapshot goes to `<file>.compacting` in parts;
   * then, as a step between groups, the groups written since it began are added, and the result is installed.
   * A failure leaves the file as it was.
   */
  private compact(): void {
    const since = { text: [] as string[], lines: 0 };
    this.since = since;
    const { file, epoch } = this;
    const tmp = `${file}.compacting`;
    const run = async () => {
      const fh = await fs.open(tmp, 'w');
      try {
        const lines = await writeLines(fh, this.o.snapshot!());
        await fh.sync(); // most of the bytes, before appends have to wait
        await this.between(async () => {
          this.since = undefined;
          // A rewrite or a switch came first: appending goes on elsewhere, this copy is of no use.
          if (this.epoch !== epoch) return;
          for (const t of since.text) await fh.write(t);
          await fh.sync();
          await this.install(fh, tmp, file, lines + since.lines);
        });
      } catch (err) {
        if (!this.closing) this.o.onError?.('compaction', err); // closing: not a failure, just not done
      } finally {
        this.since = undefined;
        if (this.fd !== fh) {
          await fh.close().catch(() => undefined);
          await fs.rm(tmp, { force: true }).catch(() => undefined);
        }
      }
    };
    this.compaction = run().finally(() => (this.compaction = undefined));
  }

  /**
   * Renames the fsynced `tmp` (open as `fh`, holding `lines` lines) over `file` and appends to it from now on.
   * A failed fsync of the folder after the rename breaks the writer: the rename may not survive a crash, and the
   * lines appended from then on would go with it.
   */
  private async install(fh: fs.FileHandle, tmp: string, file: string, lines: number): Promise<void> {
    await fs.rename(tmp, file);
    const old = this.fd!;
    this.fd = fh;
    this.lines = lines;
    this.rewrites++;
    await old.close();
    try {
      await syncDir(path.dirname(file));
    } catch (err) {
      this.failure = err;
      this.o.onError?.('write', err);
      throw err;
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
        if (this.failure) {
          // Broken by a step between groups (a compaction whose rename may not last): nothing more is taken.
          for (const p of this.queue.splice(0)) p.reject(this.failure);
          return;
        }
        const head = this.queue[0];
        if (head?.task) {
          this.queue.shift();
          await head.task().then(() => head.resolve(this.fileNumber), head.reject);
        } else if (head) {
          const end = this.queue.findIndex((p) => p.task !== undefined);
          const group = this.queue.splice(0, end === -1 ? this.queue.length : end);
          const text = group.map((p) => p.line).join('');
          try {
            if (text) await writeAndSync(this.fd!.fd, Buffer.from(text));
          } catch (err) {
            this.failure = err;
            this.o.onError?.('write', err);
            for (const p of [...group, ...this.queue.splice(0)]) p.reject(err);
            return;
          }
          let n = 0;
          for (const p of group) if (p.line) n++;
          this.lines += n;
          if (this.since) {
            this.since.text.push(text);
            this.since.lines += n;
          }
          this.groups++;
          for (const p of group) p.resolve(this.fileNumber);
        } else if (!this.compaction && !this.closing && this.o.compactDue?.(this.lines)) {
          this.compact(); // beside the appends; a failed one is tried again after the next group
          return;
        } else {
          return;
        }
      }
    } finally {
      this.next();
    }
  }
}
