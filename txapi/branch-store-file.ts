/**
 * The branch store in one append-only file of JSON lines (one line per change, the last line of a branch wins),
 * group-committed: every change waiting while a write is in flight goes into the next write, with one fsync for
 * the whole group. When the file holds many more lines than live branches it is compacted (rewritten, fsynced,
 * renamed over the old one). A torn last line (a crash mid-write) is ignored on open: that change was never
 * acknowledged.
 */
import * as path from 'node:path';
import { GroupCommitFile, InternalError, logger, systemClock, type Clock } from '../common';
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
  /** The file; its folder is created when missing. */
  path: string;
  /** Compact when the file has more than this many lines and at least twice as many lines as branches. */
  compactAfterLines?: number;
  clock?: Clock;
}

export const FILE_STORE_DEFAULTS = { compactAfterLines: 10_000 };

const log = logger('txapi:branch-store-file');

export class FileBranchStore implements BranchStore {
  private readonly file: string;
  private readonly compactAfterLines: number;
  private readonly clock: Clock;
  private readonly records = new Map<string, BranchRecord>();
  private readonly writer: GroupCommitFile;

  constructor(options: FileBranchStoreOptions) {
    this.file = path.resolve(options.path);
    this.compactAfterLines = options.compactAfterLines ?? FILE_STORE_DEFAULTS.compactAfterLines;
    this.clock = options.clock ?? systemClock;
    this.writer = new GroupCommitFile({
      file: this.file,
      compactDue: (lines) => lines > this.compactAfterLines && lines >= 2 * this.records.size,
      snapshot: () => [...this.records.values()].map((r) => JSON.stringify(r) + '\n'),
      onError: (what, err) => {
        if (what === 'compaction') log.warn('compaction failed', { file: this.file, err });
      },
    });
  }

  async open(): Promise<void> {
    const lines = await this.writer.open(); // a torn last line is already left out
    for (let i = 0; i < lines.length; i++) {
      try {
        const rec = Object.freeze(JSON.parse(lines[i]) as BranchRecord);
        this.records.set(branchKeyString(rec), rec);
      } catch (err) {
        throw new InternalError(`branch store ${this.file}: corrupt line ${i + 1}`, { cause: err });
      }
    }
  }

  async close(): Promise<void> {
    await this.writer.close();
  }

  /** The kept record itself: records are frozen (applyTransition), so nothing needs copying. */
  async get(key: BranchKey): Promise<BranchRecord | undefined> {
    return this.records.get(branchKeyString(key));
  }

  async transition(
    key: BranchKey,
    to: BranchStatus,
    patch: BranchPatch = {},
    options: TransitionOptions = {},
  ): Promise<TransitionResult> {
    this.check();
    const k = branchKeyString(key);
    const current = this.records.get(k);
    if (decideTransition(key, current?.status, to) === 'noop') {
      await this.writer.settled(); // a duplicate answers only once the first change is durable
      return { record: current!, changed: false };
    }
    const next = applyTransition(key, current, to, patch, this.clock.now());
    this.records.set(k, next);
    // Lazy: kept in memory only; every line holds the whole record, so the branch's next durable change (or
    // a compaction) writes it all. Nothing on disk then knows the branch, as after a crash before the write.
    if (!options.lazy) await this.append(next);
    return { record: next, changed: true };
  }

  async setData(key: BranchKey, data: Record<string, string>): Promise<BranchRecord> {
    this.check();
    const k = branchKeyString(key);
    const current = this.records.get(k);
    if (current?.status !== 'registered') {
      throw new IllegalBranchTransitionError(
        `branch ${key.branchId} of ${key.xid} is ${current?.status ?? 'unknown'}: cannot record data`,
        { details: { xid: key.xid, branchId: key.branchId } },
      );
    }
    const next = applyTransition(key, current, current.status, { data }, this.clock.now());
    this.records.set(k, next);
    await this.append(next);
    return next;
  }

  async list(statuses: readonly BranchStatus[]): Promise<BranchRecord[]> {
    return [...this.records.values()].filter((r) => statuses.includes(r.status));
  }

  async purge(beforeMs: number): Promise<number> {
    this.check();
    let n = 0;
    for (const [k, r] of this.records) {
      if (FINAL.includes(r.status) && r.updatedAtMs < beforeMs) {
        this.records.delete(k);
        n++;
      }
    }
    if (n > 0) await this.compactNow();
    return n;
  }

  /** Lines in the file now (for tests of compaction). */
  get lineCount(): number {
    return this.writer.lines;
  }

  private check(): void {
    if (this.writer.broken)
      throw new InternalError(`branch store ${this.file} failed a write`, { cause: this.writer.broken });
    if (!this.writer.isOpen) throw new InternalError(`branch store ${this.file} is not open`);
  }

  private append(rec: BranchRecord): Promise<void> {
    return this.writer.append(JSON.stringify(rec) + '\n');
  }

  private compactNow(): Promise<void> {
    return this.writer.rewrite();
  }
}
