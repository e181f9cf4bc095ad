/**
 * The redelivery filter of a subscription: remembers the ids of the last `size` events it handled and says
 * whether an id was among them. Bounded (a Set in insertion order; the oldest id leaves when a new one comes),
 * and per process: a redelivery that arrives after `size` newer events, or at another process of the group
 * (after a rebalance or a restart), is not recognised. It removes the common duplicates (a relay that
 * published a batch twice, a partition redelivered to the same process); handlers that must be exactly-once
 * across processes still need their own idempotence (e.g. the event id as a unique key in their database).
 */
import { createHash } from 'node:crypto';

export const DEDUPE_DEFAULTS = {
  /**
   * Ids remembered per subscription. Each costs at most ~128 characters (longer ones are kept as a hash), so
   * the default stays within a few MB whatever ids come in.
   */
  windowSize: 10_000,
} as const;

/** Ids longer than this (in UTF-16 units, at most 384 UTF-8 bytes) are kept as their SHA-256. */
const MAX_KEPT_ID_LENGTH = 128;

/**
 * What the window keeps for `id`: itself when short, else its SHA-256, so the window is bounded in bytes and not
 * only in count (an id can be as large as an event). The NUL prefix sets hashes apart from ordinary ids.
 */
function windowKey(id: string): string {
  return id.length <= MAX_KEPT_ID_LENGTH
    ? id
    : '\0sha256:' + createHash('sha256').update(id).digest('base64');
}

export class DedupeWindow {
  private readonly ids = new Set<string>();

  constructor(readonly size: number = DEDUPE_DEFAULTS.windowSize) {
    if (!Number.isInteger(size) || size < 1)
      throw new RangeError(`dedupe window size must be ≥ 1, got ${size}`);
  }

  /** True if `id` was recorded and is still in the window. */
  has(id: string): boolean {
    return this.ids.has(windowKey(id));
  }

  /** Records `id` (after its event was handled or dead-lettered), evicting the oldest beyond the window. */
  add(id: string): void {
    id = windowKey(id);
    if (this.ids.has(id)) {
      this.ids.delete(id); // refresh: a recent duplicate keeps the id at the young end
    } else if (this.ids.size >= this.size) {
      const oldest = this.ids.values().next().value as string;
      this.ids.delete(oldest);
    }
    this.ids.add(id);
  }

  get count(): number {
    return this.ids.size;
  }
}
