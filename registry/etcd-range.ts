/**
 * Reading a key prefix of any size from etcd: in pages of a bounded number of keys, all at the revision of the
 * first page, so no single response outgrows the client's message limit (grpc-js: 4 MiB, ~12,000 registrations
 * of ~300 bytes) and the whole read is one consistent view, as a single range would be.
 *
 * A key count does not bound bytes: a page of large values (64 KiB registrations, or bigger values someone else
 * wrote) can still pass 4 MiB, and grpc-js then refuses the whole response with RESOURCE_EXHAUSTED. Such a page
 * is asked again with half the keys, down to one key; only a single value too large for the client fails the
 * read, with an error naming its key.
 */
import {
  GRPCOutOfRangeError,
  GRPCResourceExhastedError,
  type Etcd3,
  type IKeyValue,
  type IRangeRequest,
} from 'etcd3';
import { ResourceExhaustedError } from '../common';

/** Keys per page of a prefix read. */
export const PAGE_KEYS = 1_000;

/**
 * A page size shared by the reads of one prefix. A read that had to halve its pages lowers `keys`, so the next
 * read of the same prefix (a resync, the next `services()`) starts at a size that worked instead of being
 * refused again — each refusal also costs the etcd client a reconnect (etcd3 resets a host's channels on it).
 */
export interface PageLimit {
  keys: number;
}

/** The first key after every key that starts with `p` (an etcd range_end). */
export function prefixEnd(p: Buffer): Buffer {
  const end = Buffer.from(p);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i] < 0xff) {
      end[i]++;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

/** etcd3 surfaces a response over the client's receive limit (gRPC status 8) as this class. */
function tooLarge(err: unknown): boolean {
  return err instanceof GRPCResourceExhastedError;
}

/** A read at a revision compaction has passed (etcd answers OUT_OF_RANGE). */
function compacted(err: unknown): boolean {
  return err instanceof GRPCOutOfRangeError && /compacted/.test(err.message);
}

/** Whole reads started again, at the newest revision, after compaction passed the one they were pinned to. */
const COMPACTED_RESTARTS = 3;

/**
 * Every key under `prefix` and the revision they were read at. When compaction passes the pinned revision
 * between two pages (a large prefix read slowly, an eager auto-compaction), the read starts again from the
 * first page at the newest revision — up to three times, then the error is the caller's. `pageKeys` is a
 * number, or a `PageLimit` the read lowers when a page had to be halved; `pageKeys` in the result is the size
 * it ended with.
 * Throws ResourceExhaustedError when one value alone is larger than the client accepts.
 */
export async function readPrefix(
  client: Etcd3,
  prefix: string,
  pageKeys: number | PageLimit = PAGE_KEYS,
  /** Deadline of each page's request (default: the client's own call options). */
  pageTimeoutMs?: number,
): Promise<{ kvs: IKeyValue[]; revision: string; pageKeys: number }> {
  const page = typeof pageKeys === 'number' ? { keys: pageKeys } : pageKeys;
  const end = prefixEnd(Buffer.from(prefix));
  let kvs: IKeyValue[] = [];
  let from = Buffer.from(prefix);
  let revision: string | undefined;
  let restarts = 0;
  const range = (req: IRangeRequest) =>
    client.kv.range(
      { ...req, ...(revision === undefined ? {} : { revision }) },
      pageTimeoutMs === undefined ? undefined : { deadline: Date.now() + pageTimeoutMs },
    );
  for (;;) {
    let res;
    try {
      res = await range({ key: from, range_end: end, limit: page.keys });
    } catch (err) {
      if (compacted(err) && revision !== undefined && restarts < COMPACTED_RESTARTS) {
        restarts++;
        [kvs, from, revision] = [[], Buffer.from(prefix), undefined];
        continue; // one consistent view: all of it again, at the newest revision
      }
      if (!tooLarge(err)) throw err;
      if (page.keys <= 1) throw await valueTooLarge(range, from, end, prefix, err);
      page.keys = Math.max(1, Math.floor(page.keys / 2));
      continue; // the same page again, smaller
    }
    revision ??= res.header.revision;
    for (const kv of res.kvs) kvs.push(kv);
    if (!res.more || res.kvs.length === 0) return { kvs, revision, pageKeys: page.keys };
    from = Buffer.concat([res.kvs[res.kvs.length - 1].key, Buffer.from([0])]);
  }
}

/** The error for a one-key page still refused: named after its key, which a keys-only read (small) finds. */
async function valueTooLarge(
  range: (req: IRangeRequest) => Promise<{ kvs: IKeyValue[] }>,
  from: Buffer,
  end: Buffer,
  prefix: string,
  cause: unknown,
): Promise<ResourceExhaustedError> {
  let key: string | undefined;
  try {
    const res = await range({ key: from, range_end: end, limit: 1, keys_only: true });
    key = res.kvs[0]?.key.toString();
  } catch {
    // named by where the page started, then
  }
  const what = key === undefined ? `the first key from '${from.toString()}'` : `'${key}'`;
  return new ResourceExhaustedError(
    `cannot read ${what} under '${prefix}': its value alone is larger than the etcd client accepts in one ` +
      `response (grpc-js: 4 MiB by default)`,
    { details: { prefix, key: key ?? from.toString() }, cause },
  );
}
