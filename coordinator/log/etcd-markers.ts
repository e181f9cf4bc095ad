/**
 * The etcd log's committed markers: shared keys, not one per transaction (at 1,500 tx/s an hour of per-xid
 * markers would be millions of etcd keys). A batch that finishes commits puts ONE key per marker bucket it
 * touches, `<prefix>/done/<owner>/<bucket>/<writer><seq>` → `{v: 2, d: {<xid>: decidedAtMs}}`, where the bucket
 * is the xid's mint time in `MARKER_BUCKET_MS` windows (the xid names it, so a look-up knows which keys to read).
 * The keys go on a retention lease (TTL `outcomeRetentionSeconds`, a new one granted every quarter of it), so
 * each marker expires 0.75×–1× the retention after it was written.
 *
 * A look-up reads the xid's bucket (paged) and keeps what it found: a found marker never turns false, so a hit
 * answers from memory. A miss always reads again, from a read that starts after the question (a marker written
 * just before it must be seen); questions arriving while a read is in flight share the one queued behind it.
 */
import type { Etcd3, IRequestOp } from 'etcd3';
import { randomBytes } from 'node:crypto';
import { logger, parseXid } from '../../common';
import { readPrefix } from '../../registry';
import type { CommittedMarker } from './tx-log';

/** Width of a committed-marker bucket: xids minted in the same window share their marker keys. */
export const MARKER_BUCKET_MS = 10_000;
/** Marker keys per page of a bucket read (a key holds at most one batch's markers, ~45 bytes each). */
const MARKER_PAGE_KEYS = 20;

const log = logger('coordinator:etcd-log');

export interface MarkerStats {
  /** Marker keys put, and bucket reads made. */
  markerKeys: number;
  markerReads: number;
}

export interface FinishedCommit {
  xid: string;
  /** markerBucketOf(xid), computed when the finish was queued. */
  bucket: string;
  decidedAtMs: number;
}

export class EtcdMarkers {
  /** Names this writer's marker keys apart from other writers' (HA peers write under the same owner). */
  private readonly tag = randomBytes(4).readUInt32BE(0).toString(36);
  private seq = 0;
  /** Markers found by look-ups, per bucket (insertion order = age), and their count. */
  private readonly cache = new Map<string, Map<string, number>>();
  private cached = 0;
  /** Per bucket: the read in flight, and the one queued behind it that later questions share. */
  private readonly reads = new Map<
    string,
    { inFlight?: Promise<unknown>; queued?: Promise<Map<string, number>> }
  >();
  /** The retention lease markers are put on, and a grant in flight. */
  private lease?: { id: string; grantedAtMs: number };
  private leaseGrant?: Promise<string>;

  constructor(
    private readonly client: Etcd3,
    private readonly config: {
      prefix: string;
      outcomeRetentionSeconds: number;
      maxCachedMarkers: number;
      requestTimeoutMs: number;
    },
    private readonly stats: MarkerStats,
  ) {}

  /** `<prefix>/done/<owner>/<bucket>/`: where the committed markers of xids minted with this one live. */
  bucketOf(xid: string): string {
    const { owner, createdAtMs } = parseXid(xid);
    return `${this.config.prefix}/done/${owner}/${Math.floor(createdAtMs / MARKER_BUCKET_MS).toString(36)}/`;
  }

  async lookup(xid: string): Promise<CommittedMarker | undefined> {
    const bucket = this.bucketOf(xid);
    const kept = this.cache.get(bucket)?.get(xid);
    if (kept !== undefined) return { decidedAtMs: kept };
    const found = (await this.readBucketAfterNow(bucket)).get(xid);
    return found === undefined ? undefined : { decidedAtMs: found };
  }

  /** One put per marker bucket the finished commits touch: `{v: 2, d: {xid: decidedAtMs}}`. */
  puts(finished: Iterable<FinishedCommit>, lease: string | undefined): IRequestOp[] {
    const byBucket = new Map<string, Record<string, number>>();
    for (const f of finished) {
      let d = byBucket.get(f.bucket);
      if (!d) byBucket.set(f.bucket, (d = {}));
      d[f.xid] = f.decidedAtMs;
    }
    const puts: IRequestOp[] = [];
    for (const [bucket, d] of byBucket) {
      const key = Buffer.from(`${bucket}${this.tag}${(this.seq++).toString(36)}`);
      puts.push({ request_put: { key, value: Buffer.from(JSON.stringify({ v: 2, d })), lease } });
    }
    this.stats.markerKeys += puts.length;
    return puts;
  }

  /** The current retention lease; a new one once a quarter of the retention passed since the last grant. */
  retentionLease(): Promise<string> {
    const ttl = this.config.outcomeRetentionSeconds;
    const now = Date.now();
    if (this.lease && now - this.lease.grantedAtMs < ttl * 250) return Promise.resolve(this.lease.id);
    this.leaseGrant ??= this.client.leaseClient
      .leaseGrant({ TTL: ttl, ID: 0 }, { deadline: now + this.config.requestTimeoutMs })
      .then((r) => {
        this.lease = { id: String(r.ID), grantedAtMs: now };
        return this.lease.id;
      })
      .finally(() => (this.leaseGrant = undefined));
    return this.leaseGrant;
  }

  /**
   * The bucket's markers from a read that starts after this call (a marker written just before it is seen):
   * questions arriving while a read is in flight share the one queued behind it.
   */
  private readBucketAfterNow(bucket: string): Promise<Map<string, number>> {
    let slot = this.reads.get(bucket);
    if (!slot) this.reads.set(bucket, (slot = {}));
    if (slot.queued) return slot.queued;
    const s = slot;
    const queued = Promise.resolve(s.inFlight)
      .catch(() => undefined)
      .then(() => {
        s.queued = undefined;
        const read = this.readBucket(bucket);
        s.inFlight = read;
        const done = () => {
          if (s.inFlight !== read) return;
          s.inFlight = undefined;
          if (!s.queued) this.reads.delete(bucket);
        };
        read.then(done, done);
        return read;
      });
    s.queued = queued;
    return queued;
  }

  /** Reads every marker key of a bucket (paged) and keeps what it found. */
  private async readBucket(bucket: string): Promise<Map<string, number>> {
    this.stats.markerReads++;
    const { kvs } = await readPrefix(this.client, bucket, MARKER_PAGE_KEYS, this.config.requestTimeoutMs);
    const found = new Map<string, number>();
    for (const kv of kvs) {
      try {
        const o = JSON.parse(kv.value.toString()) as { v: number; d: Record<string, number> };
        for (const [x, at] of Object.entries(o.d)) found.set(x, at);
      } catch (err) {
        log.error('skipping an unreadable committed-marker key', {
          key: kv.key.toString(),
          err: err as Error,
        });
      }
    }
    this.keep(bucket, found);
    return found;
  }

  private keep(bucket: string, found: Map<string, number>): void {
    this.cached -= this.cache.get(bucket)?.size ?? 0;
    this.cache.delete(bucket);
    if (found.size === 0) return;
    this.cache.set(bucket, found);
    this.cached += found.size;
    for (const [b, m] of this.cache) {
      if (this.cached <= this.config.maxCachedMarkers || b === bucket) break;
      this.cache.delete(b);
      this.cached -= m.size;
    }
  }
}
