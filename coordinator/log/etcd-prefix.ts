/** etcd ranges over a key prefix, for the log, its markers and HA's owner keys. */

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
