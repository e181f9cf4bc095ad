import { createHash } from 'node:crypto';
import { RandomStrategy } from './random';
import type { Provider, SelectContext, Strategy } from './strategy';

export interface ConsistentHashOptions {
  /** Points per instance on the ring: more points, more even shares (default 160). */
  virtualNodes?: number;
}

/**
 * A hash ring with virtual nodes over the instance ids: a call's `key` maps to the first point at or after its
 * hash, so the same key stays on the same instance and an instance joining takes only ~1/N of the keys.
 * Calls without a key go to a random provider.
 *
 * The ring is built when an instance it does not hold shows up, never for one missing: a provider left out (gone,
 * ejected, or already tried by this call's retry) is skipped by walking on to the next point's owner, which is
 * exactly where a ring built without it would send the key. So a retry costs a walk, not two rebuilds. Rebuilt,
 * to drop the ids gone, once it holds twice as many as are offered.
 */
export class ConsistentHashStrategy implements Strategy {
  private readonly virtualNodes: number;
  private ringIds = new Set<string>();
  private points = new Uint32Array(0);
  private owners: string[] = [];
  private readonly fallback = new RandomStrategy();
  /** The providers list last seen (callers pass the same array until their set changes) and its index by id. */
  private seen: readonly Provider[] | undefined;
  private byId = new Map<string, Provider>();

  constructor(options: ConsistentHashOptions = {}) {
    this.virtualNodes = options.virtualNodes ?? 160;
  }

  select<P extends Provider>(providers: readonly P[], ctx: SelectContext): P | undefined {
    if (providers.length <= 1 || ctx.key === undefined) return this.fallback.select(providers);
    if (providers !== this.seen) {
      this.seen = providers;
      this.byId = new Map(providers.map((p) => [p.instance.instanceId, p]));
      const joined = providers.some((p) => !this.ringIds.has(p.instance.instanceId));
      if (joined || this.ringIds.size > 2 * providers.length) this.build([...this.byId.keys()]);
    }
    return this.walk(hash32(ctx.key)) as P | undefined;
  }

  private build(ids: string[]): void {
    const entries: Array<[number, string]> = [];
    for (const id of ids) {
      for (let v = 0; v < this.virtualNodes; v += 4) {
        // one md5 gives four well-spread 32-bit points
        const d = createHash('md5').update(`${id}#${v}`).digest();
        for (let k = 0; k < 4 && v + k < this.virtualNodes; k++) entries.push([d.readUInt32BE(k * 4), id]);
      }
    }
    entries.sort((a, b) => a[0] - b[0] || (a[1] < b[1] ? -1 : 1));
    this.points = Uint32Array.from(entries, (e) => e[0]);
    this.owners = entries.map((e) => e[1]);
    this.ringIds = new Set(ids);
  }

  /** The provider owning the first point at or after `h` (wrapping), skipping owners not offered now. */
  private walk(h: number): Provider | undefined {
    const pts = this.points;
    let lo = 0;
    let hi = pts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (pts[mid] < h) lo = mid + 1;
      else hi = mid;
    }
    for (let i = 0; i < pts.length; i++) {
      const p = this.byId.get(this.owners[(lo + i) % pts.length]);
      if (p) return p;
    }
    return undefined;
  }
}

/** FNV-1a, then a murmur3 finalizer so nearby keys ("order-1", "order-2") land far apart. */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
