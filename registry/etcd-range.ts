/**
 * Reading a key prefix of any size from etcd: in pages of a bounded number of keys, all at the revision of the
 * first page, so no single response outgrows the client's message limit (grpc-js: 4 MiB, ~12,000 registrations
 * of ~300 bytes) and the whole read is one consistent view, as a single range would be.
 */
import type { Etcd3, IKeyValue } from 'etcd3';

/** Keys per page of a prefix read. */
export const PAGE_KEYS = 1_000;

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

/**
 * Every key under `prefix` and the revision they were read at. A page at a revision compacted meanwhile fails
 * (etcd's "required revision has been compacted"): the caller reads again.
 */
export async function readPrefix(
  client: Etcd3,
  prefix: string,
  pageKeys = PAGE_KEYS,
  /** Deadline of each page's request (default: the client's own call options). */
  pageTimeoutMs?: number,
): Promise<{ kvs: IKeyValue[]; revision: string }> {
  const end = prefixEnd(Buffer.from(prefix));
  const kvs: IKeyValue[] = [];
  let from = Buffer.from(prefix);
  let revision: string | undefined;
  for (;;) {
    const res = await client.kv.range(
      { key: from, range_end: end, limit: pageKeys, ...(revision === undefined ? {} : { revision }) },
      pageTimeoutMs === undefined ? undefined : { deadline: Date.now() + pageTimeoutMs },
    );
    revision ??= res.header.revision;
    for (const kv of res.kvs) kvs.push(kv);
    if (!res.more || res.kvs.length === 0) return { kvs, revision };
    from = Buffer.concat([res.kvs[res.kvs.length - 1].key, Buffer.from([0])]);
  }
}
