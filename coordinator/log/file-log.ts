/**
 * The TxLog of a lone, embedded coordinator: one append-only file on the coordinator's own disk, no etcd.
 * Durable like the etcd log (a write resolves only after the fdatasync of the group that carried it) and much
 * cheaper per transaction, but it cannot be shared: no HA takeover (the file is on one machine) and a lock file
 * keeps a second coordinator off it.
 *
 * One line per change, the last line of an xid wins:
 *   `P <record JSON>`             a record written (create or update; the same stored form as the etcd log's)
 *   `D <xid>`                     a record removed
 *   `F <xid> <decidedAtMs> <at>`  a committed transaction finished at `at`: its record removed, its committed
 *                                 marker kept until `at` + the outcome retention
 * Group commit: every change waiting while a write is in flight goes into the next write, with one fdatasync.
 * When the file holds many more lines than live records and markers, it is rewritten from memory (temporary
 * file, fsync, rename, fsync of the folder) while commits go on: they wait only for the final step, which adds
 * the lines written meanwhile (see GroupCommitFile). On open, a torn last line (a crash mid-write: never acknowledged)
 * is ignored and a corrupt line anywhere else refuses to start.
 *
 * Compare-and-swap holds by construction: this log is the file's only writer, so the record it holds in memory
 * is the stored one. Create-only and update-existing are checked against it, as the etcd log's compares do.
 * Reads wait for the group in flight, so they never answer from a change that is not durable yet.
 */
import * as path from 'node:path';
import {
  ensureDir,
  GroupCommitFile,
  InternalError,
  logger,
  ownerOf,
  PidLock,
  systemClock,
  type Clock,
} from '../../common';
import { LogConflictError, LogUnavailableError } from '../errors';
import { DEFAULTS } from '../options';
import { decodeRecord, encodeRecord } from './record-codec';
import type { CommittedMarker, LogWriteStats, TxLog, TxRecord } from './tx-log';

export const FILE_LOG_DEFAULTS = {
  /** Rewrite the file when it has more lines than this and at least twice as many as live entries. */
  compactAfterLines: 100_000,
  /**
   * Committed markers held at most (~100 bytes each in memory): past it the oldest go before their retention
   * (a warning says so), so memory stays bounded at any rate. 1,000,000 is an hour at ~280 commits/s.
   */
  maxMarkers: 1_000_000,
};

export interface FileTxLogOptions extends Partial<typeof FILE_LOG_DEFAULTS> {
  /** The log file; its folder is created when missing. `<path>.lock` holds the owning process id. */
  path: string;
  /** How long committed markers are kept (DEFAULTS.outcomeRetentionSeconds in options.ts). */
  outcomeRetentionSeconds?: number;
  clock?: Clock;
}

/** Committed markers written in one window of time; the window expires as a whole. */
interface MarkerWindow {
  startMs: number;
  markers: Map<string, number>;
}

const log = logger('coordinator:file-log');

export class FileTxLog implements TxLog {
  readonly kind = 'file';
  readonly file: string;
  /** `<file>.lock`: one coordinator per file. */
  private readonly lock: PidLock;
  private readonly compactAfterLines: number;
  private readonly maxMarkers: number;
  private readonly retentionMs: number;
  /** Markers are grouped in windows of this width; a window goes once its start is a retention old. */
  private readonly windowMs: number;
  private readonly clock: Clock;
  private readonly records = new Map<string, { stored: string; state: number }>();
  private readonly windows: MarkerWindow[] = [];
  private markerCount = 0;
  private readonly writer: GroupCommitFile;
  private closed = false;
  private opening: Promise<void> | undefined;
  /** Markers dropped over `maxMarkers` so far, and the count at the last warning. */
  private markersDropped = 0;
  private markersDroppedWarned = 0;
  private writes = 0;

  constructor(options: FileTxLogOptions) {
    this.file = path.resolve(options.path);
    this.lock = new PidLock(
      this.file,
      (m) => new LogUnavailableError(`transaction log ${m}; one coordinator per file`),
    );
    this.compactAfterLines = options.compactAfterLines ?? FILE_LOG_DEFAULTS.compactAfterLines;
    this.maxMarkers = options.maxMarkers ?? FILE_LOG_DEFAULTS.maxMarkers;
    this.retentionMs = (options.outcomeRetentionSeconds ?? DEFAULTS.outcomeRetentionSeconds) * 1000;
    // At most a quarter of the retention: a marker then lives between 0.75× and 1× of it, as on etcd.
    this.windowMs = Math.max(1, Math.min(60_000, Math.floor(this.retentionMs / 4)));
    this.clock = options.clock ?? systemClock;
    this.writer = new GroupCommitFile({
      file: this.file,
      compactDue: (lines) => lines > this.compactAfterLines && lines >= 2 * this.liveEntries(),
      tornLine: (fragment) => /^[PDF]( |$)/.test(fragment),
      snapshot: () => this.snapshot(),
      onError: (what, err) =>
        what === 'write'
          ? log.error('transaction log write failed; the log refuses every later call', {
              file: this.file,
              err,
            })
          : log.warn('compaction failed', { file: this.file, err }),
    });
  }

  /** Takes the lock and reads the file; every other call waits for it (and fails if it failed). */
  open(): Promise<void> {
    this.opening ??= this.openNow().catch(async (err: Error) => {
      await this.releaseLock(); // a log that failed to open holds nothing
      if (err instanceof LogUnavailableError || err instanceof InternalError) throw err;
      throw new LogUnavailableError(`transaction log ${this.file} cannot be opened: ${err.message}`, {
        cause: err,
      });
    });
    return this.opening;
  }

  private async openNow(): Promise<void> {
    await ensureDir(path.dirname(this.file)); // the lock file's folder
    await this.takeLock();
    // A torn last line is already left out (a cut xid could still parse and name another transaction).
    const now = this.clock.now();
    await this.writer.open((line, i) => {
      try {
        this.replay(line, now);
      } catch (err) {
        throw new InternalError(`transaction log ${this.file}: corrupt line ${i + 1}`, { cause: err });
      }
    });
  }

  private takeLock(): Promise<void> {
    return this.lock.acquire();
  }

  private releaseLock(): Promise<void> {
    return this.lock.release();
  }

  private replay(line: string, now: number): void {
    const kind = line[0];
    if (line[1] !== ' ') throw new Error('no line kind');
    if (kind === 'P') {
      const stored = line.slice(2);
      const rec = decodeRecord(stored);
      this.records.set(rec.xid, { stored, state: rec.state });
      return;
    }
    const [xid, decided, at] = line.slice(2).split(' ');
    ownerOf(xid);
    if (kind === 'D') {
      this.records.delete(xid);
      return;
    }
    if (kind !== 'F') throw new Error(`unknown line kind '${kind}'`);
    const decidedAtMs = Number(decided);
    const atMs = Number(at);
    if (!Number.isFinite(decidedAtMs) || !Number.isFinite(atMs)) throw new Error('bad finish line');
    this.records.delete(xid);
    if (atMs + this.retentionMs > now) this.addMarker(xid, decidedAtMs, atMs);
  }

  create(record: TxRecord): Promise<void> {
    return this.write(() => {
      const held = this.records.get(record.xid);
      if (held) {
        if (held.state === record.state) return undefined; // a retry after a lost answer
        throw new LogConflictError(record.xid, 'a record already exists');
      }
      return this.put(record);
    });
  }

  update(record: TxRecord): Promise<void> {
    return this.write(() => {
      if (!this.records.has(record.xid)) throw new LogConflictError(record.xid, 'no record to update');
      return this.put(record);
    });
  }

  remove(xid: string): Promise<void> {
    return this.write(() => {
      ownerOf(xid);
      if (!this.records.delete(xid)) return undefined;
      return `D ${xid}\n`;
    });
  }

  finishCommitted(xid: string, decidedAtMs: number): Promise<void> {
    return this.write(() => {
      ownerOf(xid);
      const at = this.clock.now();
      this.records.delete(xid);
      this.addMarker(xid, decidedAtMs, at);
      return `F ${xid} ${decidedAtMs} ${at}\n`;
    });
  }

  async committedMarker(xid: string): Promise<CommittedMarker | undefined> {
    await this.readable();
    this.expireMarkers();
    for (let i = this.windows.length - 1; i >= 0; i--) {
      const d = this.windows[i].markers.get(xid);
      if (d !== undefined) return { decidedAtMs: d };
    }
    return undefined;
  }

  async load(owner: string): Promise<TxRecord[]> {
    await this.readable();
    const out: TxRecord[] = [];
    for (const [xid, { stored }] of this.records) if (ownerOf(xid) === owner) out.push(decodeRecord(stored));
    return out;
  }

  /** Owners with live records in the file, and how many each (a file log has one owner: see Coordinator). */
  async owners(): Promise<Map<string, number>> {
    await this.readable();
    const out = new Map<string, number>();
    for (const xid of this.records.keys()) out.set(ownerOf(xid), (out.get(ownerOf(xid)) ?? 0) + 1);
    return out;
  }

  async get(xid: string): Promise<TxRecord | undefined> {
    await this.readable();
    const held = this.records.get(xid);
    return held ? decodeRecord(held.stored) : undefined;
  }

  /** Records held (tests, metrics). */
  get size(): number {
    return this.records.size;
  }

  writeStats(): LogWriteStats {
    return { writes: this.writes, batches: this.writer.groups };
  }

  /** Groups written (one fdatasync each), compactions, and markers dropped over `maxMarkers` (tests, metrics). */
  get stats(): { groups: number; compactions: number; markersDropped: number } {
    return {
      groups: this.writer.groups,
      compactions: this.writer.rewrites,
      markersDropped: this.markersDropped,
    };
  }

  /** Lines in the file now (tests of compaction). */
  get lineCount(): number {
    return this.writer.lines;
  }

  /** Lets the group in flight finish, then releases the file and its lock. */
  async close(): Promise<void> {
    if (!this.opening) return;
    await this.opening.catch(() => undefined);
    this.closed = true;
    await this.writer.close();
    await this.releaseLock();
  }

  private put(record: TxRecord): string {
    ownerOf(record.xid); // a malformed xid is refused, as the etcd log's key does
    const stored = encodeRecord(record).toString();
    this.records.set(record.xid, { stored, state: record.state });
    return `P ${stored}\n`;
  }

  /**
   * Applies a change to memory (synchronously, so changes keep their call order) and resolves once its line
   * is durable. `change` returns the line, or undefined for a no-op (answered once what is pending is durable).
   */
  private async write(change: () => string | undefined): Promise<void> {
    await this.open();
    this.check();
    const line = change();
    if (line === undefined) return this.writer.settled();
    this.writes++;
    await this.writer.append(line);
  }

  /** Resolves once nothing written before this call is still on its way to the disk. */
  private async readable(): Promise<void> {
    await this.open();
    this.check();
    await this.writer.settled();
  }

  private check(): void {
    if (this.closed) throw new LogUnavailableError(`transaction log ${this.file} is closed`);
    // Another process took the log over (its lock went stale: this one stopped touching it): write nothing more.
    if (this.lock.lost) throw this.lock.lost;
    if (this.writer.broken) {
      throw new LogUnavailableError(`transaction log ${this.file} failed a write`, {
        cause: this.writer.broken,
      });
    }
  }

  private liveEntries(): number {
    return this.records.size + this.markerCount;
  }

  /**
   * What a compaction writes: the records, then the unexpired markers, produced as they are written (the
   * compaction runs beside the appends, which follow it in the new file: see GroupCommitFile).
   */
  private *snapshot(): Iterable<string> {
    this.expireMarkers();
    for (const { stored } of this.records.values()) yield `P ${stored}\n`;
    for (const w of [...this.windows]) for (const [xid, d] of w.markers) yield `F ${xid} ${d} ${w.startMs}\n`;
  }

  private addMarker(xid: string, decidedAtMs: number, atMs: number): void {
    const startMs = atMs - (atMs % this.windowMs);
    let w = this.windows[this.windows.length - 1];
    if (!w || w.startMs < startMs) {
      w = { startMs, markers: new Map() };
      this.windows.push(w);
    } else if (w.startMs > startMs) {
      // An older time (a replayed line, a clock step back): its own window, kept in order.
      const i = this.windows.findIndex((x) => x.startMs >= startMs);
      if (this.windows[i].startMs !== startMs) this.windows.splice(i, 0, { startMs, markers: new Map() });
      w = this.windows[i];
    }
    const before = w.markers.size;
    w.markers.set(xid, decidedAtMs);
    this.markerCount += w.markers.size - before;
    this.expireMarkers();
    if (this.markerCount > this.maxMarkers) this.dropOldestMarkers();
  }

  /** Over `maxMarkers`: the oldest markers go before their retention (oldest window first). */
  private dropOldestMarkers(): void {
    let dropped = 0;
    const oldest = this.windows[0].startMs;
    while (this.markerCount > this.maxMarkers && this.windows.length > 0) {
      const w = this.windows[0];
      for (const xid of w.markers.keys()) {
        if (this.markerCount <= this.maxMarkers) break;
        w.markers.delete(xid);
        this.markerCount--;
        dropped++;
      }
      if (w.markers.size === 0) this.windows.shift();
    }
    this.markersDropped += dropped;
    if (
      this.markersDropped - this.markersDroppedWarned >= this.maxMarkers / 10 ||
      this.markersDroppedWarned === 0
    ) {
      this.markersDroppedWarned = this.markersDropped;
      log.warn('committed outcomes forgotten before their retention: more than maxMarkers are held', {
        file: this.file,
        maxMarkers: this.maxMarkers,
        dropped: this.markersDropped,
        oldestAgeS: Math.round((this.clock.now() - oldest) / 1000),
      });
    }
  }

  /** Drops the windows that started a retention ago. */
  private expireMarkers(): void {
    const now = this.clock.now();
    while (this.windows.length > 0 && this.windows[0].startMs + this.retentionMs <= now) {
      this.markerCount -= this.windows.shift()!.markers.size;
    }
  }
}
