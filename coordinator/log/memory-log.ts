/**
 * An in-memory TxLog for unit tests: nothing survives the process, so it refuses to exist outside tests
 * unless the caller says explicitly that it accepts losing committed decisions.
 */
import { ownerOf, systemClock, type Clock } from '../../common';
import { LogConflictError, UnsafeLogError } from '../errors';
import { decodeRecord, encodeRecord } from './record-codec';
import { DEFAULTS } from '../options';
import type { CommittedMarker, LogWriteStats, TxLog, TxRecord } from './tx-log';

export interface MemoryTxLogOptions {
  /** Allow construction when NODE_ENV is not 'test'. Committed decisions are lost with the process. */
  allowInProduction?: boolean;
  /** Same as allowInProduction, named for what it is. */
  unsafeForTests?: boolean;
  /** TTL of committed markers (DEFAULTS.outcomeRetentionSeconds); they expire by this clock. */
  outcomeRetentionSeconds?: number;
  clock?: Clock;
}

export class MemoryTxLog implements TxLog {
  readonly kind = 'memory';
  private readonly records = new Map<string, Buffer>();
  /** Committed markers and when they expire (the etcd log's lease, at its longest: written + retention). */
  private readonly markers = new Map<string, CommittedMarker & { expiresAtMs: number }>();
  private readonly clock: Clock;
  private readonly retentionMs: number;
  /** Writes so far (tests assert "no log write" paths with it). */
  writes = 0;
  /** Simulated outage: every call rejects while set. */
  failing = false;

  constructor(options: MemoryTxLogOptions = {}) {
    this.clock = options.clock ?? systemClock;
    this.retentionMs = (options.outcomeRetentionSeconds ?? DEFAULTS.outcomeRetentionSeconds) * 1000;
    if (process.env.NODE_ENV !== 'test' && !options.allowInProduction && !options.unsafeForTests) {
      throw new UnsafeLogError(
        'MemoryTxLog is for unit tests: it loses every committed decision with the process. Use the etcd log, ' +
          'or pass { unsafeForTests: true } (or allowInProduction: true) if you really mean it; NODE_ENV is ' +
          `'${process.env.NODE_ENV ?? ''}'`,
      );
    }
  }

  private check(): void {
    if (this.failing) throw new Error('memory log is failing (simulated outage)');
  }

  async create(record: TxRecord): Promise<void> {
    this.check();
    const prev = this.records.get(record.xid);
    if (prev) {
      if (decodeRecord(prev).state === record.state) return;
      throw new LogConflictError(record.xid, 'a record already exists');
    }
    this.writes++;
    this.records.set(record.xid, encodeRecord(record));
  }

  async update(record: TxRecord): Promise<void> {
    this.check();
    if (!this.records.has(record.xid)) throw new LogConflictError(record.xid, 'no record to update');
    this.writes++;
    this.records.set(record.xid, encodeRecord(record));
  }

  async remove(xid: string): Promise<void> {
    this.check();
    if (this.records.delete(xid)) this.writes++;
  }

  async finishCommitted(xid: string, decidedAtMs: number): Promise<void> {
    this.check();
    ownerOf(xid);
    this.records.delete(xid);
    this.writes++;
    this.markers.set(xid, { decidedAtMs, expiresAtMs: this.clock.now() + this.retentionMs });
  }

  async committedMarker(xid: string): Promise<CommittedMarker | undefined> {
    this.check();
    const m = this.markers.get(xid);
    if (!m) return undefined;
    if (this.clock.now() >= m.expiresAtMs) {
      this.markers.delete(xid);
      return undefined;
    }
    return { decidedAtMs: m.decidedAtMs };
  }

  async load(owner: string): Promise<TxRecord[]> {
    this.check();
    return [...this.records.entries()]
      .filter(([xid]) => ownerOf(xid) === owner)
      .map(([, b]) => decodeRecord(b));
  }

  async get(xid: string): Promise<TxRecord | undefined> {
    this.check();
    const b = this.records.get(xid);
    return b ? decodeRecord(b) : undefined;
  }

  /** Every write is its own batch here. */
  writeStats(): LogWriteStats {
    return { writes: this.writes, batches: this.writes };
  }

  get size(): number {
    return this.records.size;
  }

  async close(): Promise<void> {}
}
