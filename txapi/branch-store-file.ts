/**
 * The branch store in append-only files of JSON lines (one line per change, holding the whole record; the last
 * line of a branch wins), group-committed: every change waiting while a write is in flight goes into the next
 * write, with one fdatasync for the whole group. A torn last line (a crash mid-write) is ignored on open: that
 * change was never acknowledged.
 *
 * The lines go to numbered segments — `<path>` is segment 0, then `<path>.1`, `<path>.2`, … — a new one started
 * when the current one has `segmentLines` lines. Nothing is ever rewritten: the oldest segment is deleted once
 * none of its lines is a branch's latest (each was overtaken by a later change or purged). Deleting oldest first
 * keeps every earlier line of a branch gone before its later ones, so a purged branch never comes back from an
 * old line. A branch left unfinished longer than everything else in the oldest segment (in doubt past
 * `retentionMs`) is written again at the end so that the segment can go. So files are only appended, fsynced and
 * deleted: no pause to copy an hour of final branches, and no size past which the store cannot open again.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import {
  ensureDir,
  GroupCommitFile,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  logger,
  PidLock,
  readLines,
  syncDir,
  systemClock,
  type Clock,
} from '../common';
import {
  applyTransition,
  branchKeyString,
  decideTransition,
  FINAL,
  type BranchKey,
  type BranchPatch,
  type BranchRecord,
  type BranchStatus,
  type BranchStore,
  type TransitionOptions,
  type TransitionResult,
} from './branch-store';
import { IllegalBranchTransitionError } from './errors';

export interface FileBranchStoreOptions {
  /** The first segment's file; the next ones are `<path>.1`, `<path>.2`, …; the folder is made when missing. */
  path: string;
  /** A new segment is started when the current one has this many lines. */
  segmentLines?: number;
  clock?: Clock;
}

export const FILE_STORE_DEFAULTS = { segmentLines: 100_000 };

const log = logger('txapi:branch-store-file');

/** A branch known here: its record, and the segment holding its latest durable line (NONE: in memory only). */
interface Kept {
  readonly key: string;
  rec: BranchRecord;
  seg: number;
  /** Writes of it in flight: purging leaves it for the next round. */
  writing: number;
}

const NONE = -1;

interface Segment {
  readonly n: number;
  /** Branches whose latest durable line is in it: it may go when none is left. */
  live: number;
  /** Lines in it. */
  lines: number;
  /**
   * When its latest line was written (this store's clock; for a segment read at open, the latest `updatedAtMs`
   * in it): once purging is past it, every final branch of it is gone, so only unfinished ones can hold it.
   */
  writtenMs: number;
}

export class FileBranchStore implements BranchStore {
  private readonly file: string;
  private readonly segmentLines: number;
  private readonly clock: Clock;
  private readonly records = new Map<string, Kept>();
  /** The branches not final yet (what recovery lists), so a list of them is not a walk over every branch. */
  private readonly unfinished = new Set<Kept>();
  /**
   * Final branches in the order they became final (so by `updatedAtMs` while the clock does not step back):
   * purging takes from the front and stops at the first one too recent, instead of walking every branch.
   */
  private finals: Kept[] = [];
  private finalsHead = 0;
  /** Segments on disk by number; numbers only grow, the highest is appended to. */
  private readonly segments = new Map<number, Segment>();
  private writer: GroupCommitFile | undefined;
  /** The segment appended to. */
  private active = 0;
  private rolling: Promise<void> | undefined;
  private dropping: Promise<void> | undefined;
  private closed = false;
  private readonly lock: PidLock;

  constructor(options: FileBranchStoreOptions) {
    if ('compactAfterLines' in options) {
      throw new InvalidArgumentError(
        'FileBranchStore: compactAfterLines is gone (the store no longer rewrites its file): use segmentLines',
      );
    }
    this.file = path.resolve(options.path);
    this.segmentLines = options.segmentLines ?? FILE_STORE_DEFAULTS.segmentLines;
    if (!Number.isSafeInteger(this.segmentLines) || this.segmentLines < 1) {
      throw new InvalidArgumentError(
        `FileBranchStore: segmentLines must be a positive integer, not ${options.segmentLines}`,
      );
    }
    this.clock = options.clock ?? systemClock;
    this.lock = new PidLock(
      this.file,
      (m) => new FailedPreconditionError(`branch store ${m}: one participant process per store`),
    );
  }

  /**
   * Takes `<path>.lock` (one process per store: two instances appending to one file, e.g. twins started with the
   * same instance id, would each trust only its own lines), reads every segment, oldest first, and opens the
   * newest for appending.
   */
  async open(): Promise<void> {
    await ensureDir(path.dirname(this.file));
    await this.lock.acquire();
    try {
      await this.openSegments();
    } catch (err) {
      await this.lock.release();
      throw err;
    }
  }

  private async openSegments(): Promise<void> {
    const numbers = await this.segmentNumbers();
    // Segments are made one after another and deleted oldest first: their numbers never have a gap. One that
    // does not fit (a copy named `<path>.20261127`, say) is not the store's, and appending to it would be wrong.
    const stray = numbers.find((n, i) => n !== numbers[0] + i);
    if (stray !== undefined) {
      throw new InternalError(
        `branch store ${this.file}: ${this.fileOf(stray)} does not follow the segments before it ` +
          `(${numbers.map((n) => path.basename(this.fileOf(n))).join(', ')}): move files that are not the ` +
          "store's out of its folder",
        { details: { file: this.fileOf(stray) } },
      );
    }
    const last = numbers.pop() ?? 0;
    for (const n of numbers) {
      const seg = this.segment(n);
      const read = await readLines(this.fileOf(n), (line) => this.replay(line, seg));
      if (read.tornBytes > 0) {
        // Only the segment appended to can be cut by a crash, and its torn line is cut off at the next open.
        log.warn('ignoring a torn last line in an older segment', { file: this.fileOf(n) });
      }
    }
    const writer = new GroupCommitFile({
      file: this.fileOf(last),
      fileNumber: last,
      onError: (what, err) => log.error('branch store write failed', { file: this.file, what, err }),
      tornLine: (fragment) => /^\{("|$)/.test(fragment), // every line is a JSON record
    });
    const seg = this.segment(last);
    await writer.open((line) => this.replay(line, seg));
    this.writer = writer;
    this.active = last;
  }

  /** Lets a purge's segment deletion and a roll under way finish (no new roll starts), then closes the file. */
  async close(): Promise<void> {
    this.closed = true;
    await this.dropping;
    await this.rolling;
    await this.writer?.close();
    await this.lock.release();
  }

  /**
   * The kept record itself: records are frozen (applyTransition), so nothing needs copying. Refused once a write
   * failed, as every change is: memory then holds a state the disk may not (a `prepared` whose line never landed),
   * and answering from it would act on a vote that a restart forgets — a repeated one-phase Commit ran COMMIT
   * PREPARED, and the restarted participant, knowing no branch, reported it not committed.
   */
  async get(key: BranchKey): Promise<BranchRecord | undefined> {
    this.check();
    return this.records.get(branchKeyString(key))?.rec;
  }

  async transition(
    key: BranchKey,
    to: BranchStatus,
    patch: BranchPatch = {},
    options: TransitionOptions = {},
  ): Promise<TransitionResult> {
    const writer = this.check();
    const k = branchKeyString(key);
    const kept = this.records.get(k);
    if (decideTransition(key, kept?.rec.status, to) === 'noop') {
      await writer.settled(); // a duplicate answers only once the first change is durable
      return { record: kept!.rec, changed: false };
    }
    const next = applyTransition(key, kept?.rec, to, patch, this.clock.now());
    const entry = this.keep(k, kept, next);
    // Lazy: kept in memory only; every line holds the whole record, so the branch's next durable change writes
    // it all. Nothing on disk then knows the branch, as after a crash before the write.
    if (!options.lazy) await this.write(entry);
    return { record: next, changed: true };
  }

  async setData(key: BranchKey, data: Record<string, string>): Promise<BranchRecord> {
    this.check();
    const k = branchKeyString(key);
    const kept = this.records.get(k);
    if (kept?.rec.status !== 'registered') {
      throw new IllegalBranchTransitionError(
        `branch ${key.branchId} of ${key.xid} is ${kept?.rec.status ?? 'unknown'}: cannot record data`,
        { details: { xid: key.xid, branchId: key.branchId } },
      );
    }
    const next = applyTransition(key, kept.rec, 'registered', { data }, this.clock.now());
    await this.write(this.keep(k, kept, next));
    return next;
  }

  async list(statuses: readonly BranchStatus[]): Promise<BranchRecord[]> {
    this.check(); // as get(): never answered from a memory ahead of the disk
    const out: BranchRecord[] = [];
    const all = statuses.some((s) => FINAL.includes(s)) ? this.records.values() : this.unfinished;
    for (const { rec } of all) if (statuses.includes(rec.status)) out.push(rec);
    return out;
  }

  /**
   * Forgets final branches last changed before `beforeMs`, taking them in the order they became final and
   * stopping at the first too recent (after a small step back of the wall clock, one may be forgotten a round
   * late; one stamped while the clock was ahead of now goes to the back, forgotten when its own time comes),
   * then deletes the oldest segments nothing needs.
   */
  async purge(beforeMs: number): Promise<number> {
    this.check();
    const now = this.clock.now();
    let n = 0;
    for (const end = this.finals.length; this.finalsHead < end;) {
      const kept = this.finals[this.finalsHead];
      // Left behind: purged already, or reopened after a purge (read back from lines: it is queued again when
      // it ends again).
      if (this.records.get(kept.key) !== kept || !FINAL.includes(kept.rec.status)) {
        this.finalsHead++;
        continue;
      }
      if (kept.writing > 0) break;
      if (kept.rec.updatedAtMs >= beforeMs) {
        if (kept.rec.updatedAtMs <= now) break; // the first one too recent: those behind it ended later
        // Stamped while the clock was ahead of where it is now: to the back, not holding up the ones behind it.
        this.finalsHead++;
        this.finals.push(kept);
        continue;
      }
      this.finalsHead++;
      this.records.delete(kept.key);
      this.moveLive(kept.seg, NONE);
      n++;
    }
    if (this.finalsHead > 1_024 && this.finalsHead * 2 > this.finals.length) {
      this.finals = this.finals.slice(this.finalsHead);
      this.finalsHead = 0;
    }
    const drop = (this.dropping ?? Promise.resolve()).then(() => this.dropOldSegments(beforeMs));
    this.dropping = drop.catch(() => undefined);
    await drop;
    return n;
  }

  /** Lines in all segments (for tests and operators). */
  get lineCount(): number {
    let n = 0;
    for (const s of this.segments.values()) n += s.lines;
    return n;
  }

  /** Segments on disk now, and one being started (its file made in the background). */
  get segmentCount(): number {
    return this.segments.size;
  }

  private check(): GroupCommitFile {
    const w = this.writer;
    // Another process took the store over (its lock went stale: this one stopped touching it): write nothing more.
    if (this.lock.lost) throw this.lock.lost;
    if (w?.broken) throw new InternalError(`branch store ${this.file} failed a write`, { cause: w.broken });
    if (!w?.isOpen) throw new InternalError(`branch store ${this.file} is not open`);
    return w;
  }

  private fileOf(n: number): string {
    return n === 0 ? this.file : `${this.file}.${n}`;
  }

  /** The numbers of the segments on disk, ascending. */
  private async segmentNumbers(): Promise<number[]> {
    const base = path.basename(this.file);
    const out: number[] = [];
    for (const name of await fs.readdir(path.dirname(this.file))) {
      if (name === base) out.push(0);
      else if (name.startsWith(`${base}.`) && /^[1-9][0-9]{0,14}$/.test(name.slice(base.length + 1))) {
        out.push(Number(name.slice(base.length + 1)));
      }
    }
    return out.sort((a, b) => a - b);
  }

  private segment(n: number): Segment {
    let s = this.segments.get(n);
    if (!s) this.segments.set(n, (s = { n, live: 0, lines: 0, writtenMs: 0 }));
    return s;
  }

  private replay(line: string, seg: Segment): void {
    let rec: BranchRecord;
    try {
      rec = Object.freeze(JSON.parse(line) as BranchRecord);
    } catch (err) {
      throw new InternalError(`branch store ${this.fileOf(seg.n)}: corrupt line ${seg.lines + 1}`, {
        cause: err,
      });
    }
    if (!isRecord(rec)) {
      throw new InternalError(
        `branch store ${this.fileOf(seg.n)}: line ${seg.lines + 1} is no branch record (not this kind of file?)`,
        { details: { file: this.fileOf(seg.n) } },
      );
    }
    seg.lines++;
    seg.writtenMs = Math.max(seg.writtenMs, rec.updatedAtMs);
    const k = branchKeyString(rec);
    const kept = this.keep(k, this.records.get(k), rec);
    this.moveLive(kept.seg, seg.n);
    kept.seg = seg.n;
  }

  /** Sets the branch's record (a new entry when `kept` is undefined), keeping the indexes by state right. */
  private keep(k: string, kept: Kept | undefined, rec: BranchRecord): Kept {
    const wasFinal = kept !== undefined && FINAL.includes(kept.rec.status);
    if (!kept) {
      kept = { key: k, rec, seg: NONE, writing: 0 };
      this.records.set(k, kept);
    }
    kept.rec = rec;
    if (!FINAL.includes(rec.status)) {
      this.unfinished.add(kept);
    } else if (!wasFinal) {
      this.unfinished.delete(kept);
      this.finals.push(kept);
    }
    return kept;
  }

  /** One branch's latest durable line is now in `to` instead of `from` (NONE: nowhere). */
  private moveLive(from: number, to: number): void {
    if (from === to) return;
    if (from !== NONE) this.segments.get(from)!.live--;
    if (to !== NONE) this.segments.get(to)!.live++;
  }

  /**
   * Writes the branch's record as it is now, durably, and notes the segment its line went to. The caller holds
   * the branch's lock, or writes a record again unchanged (dropOldSegments): the line written is never older
   * than one written before it.
   */
  private async write(kept: Kept): Promise<void> {
    const rec = kept.rec;
    kept.writing++;
    try {
      const n = await this.writer!.append(JSON.stringify(rec) + '\n');
      const seg = this.segment(n);
      seg.lines++;
      // The time of writing, not the record's: a branch written again keeps its old updatedAtMs.
      seg.writtenMs = this.clock.now();
      // A branch purged meanwhile is not live anywhere; a later line of it may have landed first (same segment).
      if (this.records.get(kept.key) === kept && n >= kept.seg) {
        this.moveLive(kept.seg, n);
        kept.seg = n;
      }
    } finally {
      kept.writing--;
    }
    if (this.writer!.lines >= this.segmentLines) this.roll();
  }

  /** Starts the next segment (once at a time); a failure leaves appending in the current one, tried again later. */
  private roll(): void {
    if (this.rolling || this.closed || !this.writer?.isOpen) return;
    const n = this.active + 1;
    this.segment(n);
    this.rolling = this.writer
      .switchTo(this.fileOf(n), n)
      .then(
        () => {
          this.active = n;
        },
        (err: unknown) => {
          if (this.segments.get(n)?.lines === 0) this.segments.delete(n);
          log.warn('could not start a new segment', { file: this.fileOf(n), err });
        },
      )
      .finally(() => (this.rolling = undefined));
  }

  /**
   * Deletes segments from the oldest while none of their lines is needed, up to the one appended to when it
   * started. A segment held only by unfinished branches (its final ones all purged: purging is past its last
   * write, or that write's time is ahead of the clock, which stepped back) has them written again in the segment
   * appended to, then goes; written now, they hold that one for another retention.
   */
  private async dropOldSegments(beforeMs: number): Promise<void> {
    const upTo = this.active;
    for (;;) {
      const oldest = Math.min(...this.segments.keys());
      const seg = this.segments.get(oldest);
      if (!seg || oldest >= upTo || this.closed) return;
      if (seg.live > 0) {
        if (seg.writtenMs >= beforeMs && seg.writtenMs <= this.clock.now()) return;
        await this.writeAgain(oldest, [...this.unfinished]);
        // A final branch not purged yet (a write in flight, a clock that stepped back): rare, so a full walk.
        if (seg.live > 0) await this.writeAgain(oldest, [...this.records.values()]);
        if (seg.live > 0) return; // changed meanwhile: next round
      }
      await fs.unlink(this.fileOf(oldest)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
      // Durable before the next one goes: a crash must never bring an older segment back after a later one.
      await syncDir(path.dirname(this.file));
      this.segments.delete(oldest);
    }
  }

  /** Writes again those of `candidates` whose latest line is in segment `n`. */
  private async writeAgain(n: number, candidates: Kept[]): Promise<void> {
    const held = candidates.filter((kept) => kept.seg === n);
    if (held.length === 0) return;
    log.info('writing branches again to free an old segment', {
      file: this.fileOf(n),
      branches: held.length,
    });
    await Promise.all(held.map((kept) => this.write(kept)));
  }
}

const STATUSES: readonly string[] = ['registered', 'prepared', 'committed', 'rolled_back'];

/** A line's JSON has a branch record's shape (what the store itself writes). */
function isRecord(r: unknown): r is BranchRecord {
  const o = r as Partial<BranchRecord> | null;
  return (
    typeof o === 'object' &&
    o !== null &&
    typeof o.xid === 'string' &&
    typeof o.branchId === 'string' &&
    STATUSES.includes(o.status as string) &&
    Number.isFinite(o.updatedAtMs)
  );
}
