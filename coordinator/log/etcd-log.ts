/**
 * The durable TxLog on etcd, and the default. Key layout: `<prefix>/tx/<owner>/<xid>` → the encoded record.
 *
 * Group commit: writes queue up and are flushed together as ONE etcd txn (at most `maxBatchOps` operations and
 * about `maxBatchBytes`; etcd's --max-txn-ops is 4096 locally and its request limit 1.5 MiB). Every record keeps
 * its own compare-and-swap: create-only records compare `version == 0`, updates compare the mod revision this
 * log last saw. The txn also carries the optional `fence` compares (HA: the owner's election key), so a
 * fenced-out ex-owner writes nothing at all. A write resolves only after the txn that carried it succeeded.
 *
 * Flat first, nested on conflict: a batch goes out as one flat txn (every compare in the txn's compare list, a
 * plain put/delete per record), which is what etcd and its client handle cheapest; conflicts are rare (a retry
 * after a lost answer, a takeover). When the flat txn's compares do not all hold, the same batch is sent again
 * with each record as a nested txn of its own, so one record losing its compare does not fail the others and
 * each learns its own outcome (and a lost fence is told apart from a record conflict).
 *
 * Committed markers (etcd-markers.ts) are shared keys, one per marker bucket a batch touches: `finishCommitted`
 * deletes the record and, in the same txn, the batch puts its markers, on the retention lease. Finishes linger
 * (`finishLingerMs`) so that many share a key: with one key per write batch, 1,000 tx/s made up to ~3.6 M live
 * marker keys an hour; lingering bounds that to ~10 keys a second per bucket touched, whatever the rate. Nothing
 * waits on a finish but the removal of the finished transaction from memory.
 */
import { Etcd3, type ICompare, type IRequestOp, type ITxnResponse } from 'etcd3';
import {
  checkWholeNumber,
  InternalError,
  logger,
  MAX_TIMER_MS,
  ownerOf,
  withoutUndefined,
} from '../../common';
import { LogConflictError, LogFencedError, LogUnavailableError } from '../errors';
import { EtcdMarkers, type FinishedCommit } from './etcd-markers';
import {
  etcdCallDeadline,
  etcdChannelOptions,
  etcdFaultHandling,
  readPrefix,
  type EtcdChannelOptions,
  type EtcdSecurity,
} from '../../registry';

export { MARKER_BUCKET_MS } from './etcd-markers';
import { decodeRecord, encodeRecord } from './record-codec';
import type { CommittedMarker, LogWriteStats, TxLog, TxRecord } from './tx-log';
import { DEFAULTS } from '../options';

export const ETCD_LOG_DEFAULTS = {
  /** Operations per etcd txn (a record is one, a finished commit two); keep under etcd's --max-txn-ops. */
  maxBatchOps: 1000,
  /** Bytes of values per txn; etcd rejects requests over --max-request-bytes (1.5 MiB by default). */
  maxBatchBytes: 1_000_000,
  /** Txns in flight at once; writes arriving meanwhile wait for the next batch. */
  maxConcurrentFlushes: 2,
  /** Deadline of one etcd request. */
  requestTimeoutMs: 5_000,
  /** Committed markers found by look-ups and kept in memory (oldest bucket dropped first). */
  maxCachedMarkers: 100_000,
  /**
   * Finished commits go out at most this often (a lone one at once, those following it within this window
   * together): each txn that carries finishes puts one marker key per bucket, so this bounds the marker keys a
   * coordinator adds (~10 per second per bucket touched) whatever its rate. 0: with every batch.
   */
  finishLingerMs: 100,
};

export interface EtcdTxLogOptions extends Partial<typeof ETCD_LOG_DEFAULTS> {
  /** Key prefix (e.g. '/dmtp'); records live under `<prefix>/tx/`. */
  prefix: string;
  /** An etcd client to use (not closed by the log), or endpoints for one the log owns. */
  client?: Etcd3;
  endpoints?: string[];
  /** Keepalive and reconnect backoff of a client created from `endpoints` (the coordinator's too). */
  channel?: EtcdChannelOptions;
  /** TLS of a client created from `endpoints` (the coordinator's too): etcd3's `credentials`. */
  credentials?: EtcdSecurity['credentials'];
  /** etcd user of a client created from `endpoints` (the coordinator's too): etcd3's `auth`. */
  auth?: EtcdSecurity['auth'];
  /** Extra compares put on every batch (HA fencing). The batch fails as a whole when one does not hold. */
  fence?: () => ICompare[];
  /** Called (once per failed batch) when a fence compare did not hold: this writer lost its ownership. */
  onFenceLost?: () => void;
  /** TTL of committed markers (DEFAULTS.outcomeRetentionSeconds in options.ts). */
  outcomeRetentionSeconds?: number;
}

/**
 * The knobs over ETCD_LOG_DEFAULTS (and the marker retention), checked: whole numbers, as INVALID_ARGUMENT naming
 * the option (`etcd.<name>`). No flush slot (`maxConcurrentFlushes` 0) flushed nothing, ever: every write waited
 * for good and `drained()` (so the coordinator's stop) never resolved; a NaN or negative batch size was taken
 * silently. Only `maxCachedMarkers` and `finishLingerMs` may be 0 (no cache beyond the bucket looked up; no
 * lingering). Other fields of `o` (prefix, endpoints, …) pass through unchecked.
 */
export function compileEtcdLogOptions(
  o: Partial<typeof ETCD_LOG_DEFAULTS> & { outcomeRetentionSeconds?: number },
): typeof ETCD_LOG_DEFAULTS & { outcomeRetentionSeconds: number } {
  const c = {
    ...ETCD_LOG_DEFAULTS,
    ...withoutUndefined(o),
    outcomeRetentionSeconds: o.outcomeRetentionSeconds ?? DEFAULTS.outcomeRetentionSeconds,
  };
  for (const k of ['maxBatchOps', 'maxBatchBytes', 'maxConcurrentFlushes'] as const)
    checkWholeNumber('coordinator', `etcd.${k}`, c[k], 1, Number.MAX_SAFE_INTEGER);
  checkWholeNumber('coordinator', 'etcd.maxCachedMarkers', c.maxCachedMarkers, 0, Number.MAX_SAFE_INTEGER);
  checkWholeNumber('coordinator', 'etcd.requestTimeoutMs', c.requestTimeoutMs, 1, MAX_TIMER_MS);
  checkWholeNumber('coordinator', 'etcd.finishLingerMs', c.finishLingerMs, 0, MAX_TIMER_MS);
  checkWholeNumber(
    'coordinator',
    'outcomeRetentionSeconds',
    c.outcomeRetentionSeconds,
    1,
    Number.MAX_SAFE_INTEGER,
  );
  return c;
}

type OpKind = 'create' | 'update' | 'remove' | 'finish';
interface Op {
  kind: OpKind;
  xid: string;
  key: Buffer;
  /** 'finish': the prefix of the xid's marker bucket, and when the commit was decided. */
  bucket?: string;
  decidedAtMs?: number;
  value?: Buffer;
  state?: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

const log = logger('coordinator:etcd-log');

export class EtcdTxLog implements TxLog {
  readonly kind = 'etcd';
  readonly config: typeof ETCD_LOG_DEFAULTS & { prefix: string; outcomeRetentionSeconds: number };
  private readonly client: Etcd3;
  private readonly ownsClient: boolean;
  private readonly fence?: () => ICompare[];
  private readonly onFenceLost?: () => void;
  private queue: Op[] = [];
  /** Finishes waiting to go out together (`finishLingerMs`), the timer that sends them, and when the last went. */
  private lingering: Op[] = [];
  private lingerTimer: NodeJS.Timeout | undefined;
  private finishesSentAtMs = 0;
  private readonly busyKeys = new Set<string>();
  /** Mod revision of every record this log wrote or loaded: the compare of the next update. */
  private readonly revisions = new Map<string, string>();
  private flushing = 0;
  private scheduled: NodeJS.Immediate | undefined;
  private closed = false;
  private idleWaiters: (() => void)[] = [];
  /** Txns sent so far and records they carried (group-commit ratio for metrics and tests). */
  readonly stats = { txns: 0, ops: 0, fenced: 0, nested: 0, markerKeys: 0, markerReads: 0 };
  private readonly markers: EtcdMarkers;

  constructor(options: EtcdTxLogOptions) {
    const { client, endpoints, channel, credentials, auth, fence, onFenceLost, prefix, ...rest } = options;
    // Refused here, before a client is created or anything is written.
    this.config = { ...compileEtcdLogOptions(rest), prefix: prefix.replace(/\/+$/, '') };
    if (client) {
      this.client = client;
      this.ownsClient = false;
    } else {
      this.client = new Etcd3({
        hosts: endpoints ?? ['http://127.0.0.1:2379'],
        grpcOptions: etcdChannelOptions(channel),
        defaultCallOptions: etcdCallDeadline(this.config.requestTimeoutMs),
        faultHandling: etcdFaultHandling(),
        credentials,
        auth,
      });
      this.ownsClient = true;
    }
    this.fence = fence;
    this.onFenceLost = onFenceLost;
    this.markers = new EtcdMarkers(this.client, this.config, this.stats);
  }

  writeStats(): LogWriteStats {
    return { writes: this.stats.ops, batches: this.stats.txns };
  }

  private keyOf(xid: string): Buffer {
    return Buffer.from(`${this.config.prefix}/tx/${ownerOf(xid)}/${xid}`);
  }

  create(record: TxRecord): Promise<void> {
    return this.enqueue('create', record.xid, encodeRecord(record), record.state);
  }

  update(record: TxRecord): Promise<void> {
    return this.enqueue('update', record.xid, encodeRecord(record), record.state);
  }

  remove(xid: string): Promise<void> {
    return this.enqueue('remove', xid);
  }

  finishCommitted(xid: string, decidedAtMs: number): Promise<void> {
    return this.enqueue('finish', xid, undefined, undefined, decidedAtMs);
  }

  committedMarker(xid: string): Promise<CommittedMarker | undefined> {
    return this.markers.lookup(xid);
  }

  private enqueue(
    kind: OpKind,
    xid: string,
    value?: Buffer,
    state?: number,
    decidedAtMs?: number,
  ): Promise<void> {
    if (this.closed) return Promise.reject(new LogUnavailableError('etcd transaction log is closed'));
    let key: Buffer;
    let bucket: string | undefined;
    try {
      key = this.keyOf(xid);
      if (kind === 'finish') bucket = this.markers.bucketOf(xid);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<void>((resolve, reject) => {
      const op: Op = { kind, xid, key, bucket, decidedAtMs, value, state, resolve, reject };
      if (kind === 'finish' && this.config.finishLingerMs > 0) return this.linger(op);
      this.queue.push(op);
      this.schedule();
    });
  }

  /** Holds a finish until `finishLingerMs` after the last finishes went (at once if that has passed). */
  private linger(op: Op): void {
    this.lingering.push(op);
    const wait = this.finishesSentAtMs + this.config.finishLingerMs - Date.now();
    if (wait <= 0 || this.lingering.length * 2 >= this.config.maxBatchOps) return this.releaseFinishes();
    this.lingerTimer ??= setTimeout(() => this.releaseFinishes(), wait);
  }

  private releaseFinishes(): void {
    clearTimeout(this.lingerTimer);
    this.lingerTimer = undefined;
    if (this.lingering.length === 0) return;
    this.finishesSentAtMs = Date.now();
    for (const op of this.lingering) this.queue.push(op);
    this.lingering = [];
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled || this.closed || this.flushing >= this.config.maxConcurrentFlushes) return;
    if (this.queue.length === 0) return;
    // setImmediate: every write issued in this turn of the event loop joins the batch.
    this.scheduled = setImmediate(() => {
      this.scheduled = undefined;
      void this.flush();
    });
  }

  /** Takes the next batch: FIFO, one op per key, a key with a txn in flight waits for it. */
  private takeBatch(): Op[] {
    const batch: Op[] = [];
    const rest: Op[] = [];
    const inBatch = new Set<string>();
    let bytes = 0;
    let ops = 0;
    for (const op of this.queue) {
      const k = op.key.toString();
      // A finish: its delete, and at most one marker put (its xid and time in a shared bucket key).
      const size = op.key.length + (op.value?.length ?? 0) + (op.kind === 'finish' ? op.xid.length + 20 : 0);
      const n = op.kind === 'finish' ? 2 : 1;
      const full =
        (batch.length > 0 && ops + n > this.config.maxBatchOps) ||
        (batch.length > 0 && bytes + size > this.config.maxBatchBytes);
      if (full || inBatch.has(k) || this.busyKeys.has(k)) {
        rest.push(op);
        continue;
      }
      inBatch.add(k);
      bytes += size;
      ops += n;
      batch.push(op);
    }
    this.queue = rest;
    return batch;
  }

  /** The record's compare-and-swap condition; none for removals. */
  private compareOf(op: Op): ICompare | undefined {
    if (op.kind === 'create') return { key: op.key, target: 'Version', result: 'Equal', version: 0 };
    if (op.kind === 'update')
      return {
        key: op.key,
        target: 'Mod',
        result: 'Equal',
        mod_revision: this.revisions.get(op.xid) ?? '-1',
      };
    return undefined;
  }

  /** The batch as one flat txn: the fence and every record's compare up front, then plain puts/deletes. */
  private flatTxn(batch: Op[], lease: string | undefined) {
    const compare: ICompare[] = [...(this.fence?.() ?? [])];
    const success: IRequestOp[] = [];
    for (const op of batch) {
      const c = this.compareOf(op);
      if (c) compare.push(c);
      if (op.kind === 'remove' || op.kind === 'finish')
        success.push({ request_delete_range: { key: op.key } });
      if (op.kind === 'create' || op.kind === 'update')
        success.push({ request_put: { key: op.key, value: op.value } });
    }
    success.push(...this.markers.puts(finished(batch), lease));
    return { compare, success, failure: [] };
  }

  /** A record's op in the nested form (its own compare); a finish's marker rides in the batch's marker puts. */
  private requestOp(op: Op): IRequestOp {
    if (op.kind === 'remove' || op.kind === 'finish') return { request_delete_range: { key: op.key } };
    return {
      request_txn: {
        compare: [this.compareOf(op)!],
        success: [{ request_put: { key: op.key, value: op.value } }],
        failure: [{ request_range: { key: op.key } }],
      },
    };
  }

  private async flush(): Promise<void> {
    const batch = this.takeBatch();
    if (batch.length === 0) return this.settled();
    this.flushing++;
    for (const op of batch) this.busyKeys.add(op.key.toString());
    this.schedule(); // another batch may go out while this one is in flight
    try {
      const lease = batch.some((op) => op.kind === 'finish')
        ? await this.markers.retentionLease()
        : undefined;
      const deadline = () => ({ deadline: Date.now() + this.config.requestTimeoutMs });
      const flat = await this.client.kv.txn(this.flatTxn(batch, lease), deadline());
      this.stats.txns++;
      this.stats.ops += batch.length;
      if (flat.succeeded) {
        this.settleFlat(batch, flat);
      } else {
        // Some compare did not hold: again, each record on its own, to learn which (and whether the fence).
        const res = await this.client.kv.txn(
          {
            compare: this.fence?.() ?? [],
            // The responses line up with the batch (settle reads them by index); the marker puts come last.
            success: [...batch.map((op) => this.requestOp(op)), ...this.markers.puts(finished(batch), lease)],
            failure: [],
          },
          deadline(),
        );
        this.stats.txns++;
        this.stats.nested++;
        this.settle(batch, res);
      }
    } catch (err) {
      log.warn('etcd txn failed', { ops: batch.length, err: err as Error });
      const e = new LogUnavailableError(`etcd transaction log write failed: ${(err as Error).message}`, {
        cause: err,
      });
      for (const op of batch) op.reject(e);
    } finally {
      for (const op of batch) this.busyKeys.delete(op.key.toString());
      this.flushing--;
      this.schedule();
      this.settled();
    }
  }

  /** Every compare held: each record landed at the txn's revision. */
  private settleFlat(batch: Op[], res: ITxnResponse): void {
    const revision = String(res.header.revision);
    for (const op of batch) {
      if (op.kind === 'remove' || op.kind === 'finish') this.revisions.delete(op.xid);
      else this.revisions.set(op.xid, revision);
      op.resolve();
    }
  }

  private settle(batch: Op[], res: ITxnResponse): void {
    if (!res.succeeded) {
      const e = new LogFencedError(
        `transaction log write of ${batch[0].xid} refused: fence compare failed, this coordinator no longer owns its log`,
      );
      this.stats.fenced += batch.length;
      // First the owner learns it is fenced out (and stops its retries), then the writers hear of it.
      try {
        this.onFenceLost?.();
      } catch (err) {
        log.error('onFenceLost threw', { err: err as Error });
      }
      for (const op of batch) op.reject(e);
      return;
    }
    const revision = String(res.header.revision);
    batch.forEach((op, i) => {
      if (op.kind === 'remove' || op.kind === 'finish') {
        this.revisions.delete(op.xid);
        return op.resolve();
      }
      const sub = res.responses[i]?.response_txn;
      if (sub?.succeeded) {
        this.revisions.set(op.xid, revision);
        return op.resolve();
      }
      // The compare lost. The same state already stored means an earlier attempt landed: done.
      const kv = sub?.responses[0]?.response_range?.kvs?.[0];
      if (kv && decodeRecord(kv.value).state === op.state) {
        this.revisions.set(op.xid, String(kv.mod_revision));
        return op.resolve();
      }
      op.reject(
        new LogConflictError(op.xid, kv ? `stored record differs (${op.kind})` : `no record (${op.kind})`),
      );
    });
  }

  private idle(): boolean {
    return this.flushing === 0 && this.queue.length === 0 && !this.scheduled && this.lingering.length === 0;
  }

  private settled(): void {
    if (this.idle()) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }

  async load(owner: string): Promise<TxRecord[]> {
    const { kvs } = await readPrefix(
      this.client,
      `${this.config.prefix}/tx/${owner}/`,
      1_000,
      this.config.requestTimeoutMs,
    );
    const out: TxRecord[] = [];
    for (const kv of kvs) {
      let rec: TxRecord;
      try {
        rec = decodeRecord(kv.value);
      } catch (err) {
        // Never skipped: a record left out would be presumed aborted, and it may hold a COMMIT decision (e.g.
        // one written by a newer version). Recovery stops here until an operator looks, as the file log does.
        throw new InternalError(
          `transaction log record ${kv.key.toString()} is unreadable (${(err as Error).message}): refusing to ` +
            'recover without it',
          { cause: err, details: { key: kv.key.toString() } },
        );
      }
      this.revisions.set(rec.xid, String(kv.mod_revision));
      out.push(rec);
    }
    return out;
  }

  async get(xid: string): Promise<TxRecord | undefined> {
    const res = await this.client.kv.range(
      { key: this.keyOf(xid) },
      { deadline: Date.now() + this.config.requestTimeoutMs },
    );
    const kv = res.kvs[0];
    return kv ? decodeRecord(kv.value) : undefined;
  }

  /** Resolves when nothing is queued or in flight (lingering finishes are sent at once). */
  drained(): Promise<void> {
    this.releaseFinishes();
    if (this.idle()) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** Lets writes in flight finish, fails what is still queued, then closes an owned client. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.drained();
    this.closed = true;
    if (this.scheduled) clearImmediate(this.scheduled);
    this.scheduled = undefined;
    clearTimeout(this.lingerTimer);
    for (const op of [...this.queue, ...this.lingering])
      op.reject(new LogUnavailableError('etcd transaction log is closed'));
    this.queue = [];
    this.lingering = [];
    if (this.ownsClient) this.client.close();
  }
}

/** The batch's finished commits, for their marker puts. */
function* finished(batch: Op[]): Iterable<FinishedCommit> {
  for (const op of batch) {
    if (op.kind === 'finish') yield { xid: op.xid, bucket: op.bucket!, decidedAtMs: op.decidedAtMs! };
  }
}
