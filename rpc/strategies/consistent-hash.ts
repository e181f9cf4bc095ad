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
 * The ring is rebuilt only when the set of instance ids changes. Calls without a key go to a random provider.
 */
export class ConsistentHashStrategy implements Strategy {
  private readonly virtualNodes: number;
  private ringIds = '';
  private points = new Uint32Array(0);
  private owners: string[] = [];
  private readonly fallback = new RandomStrategy();

  constructor(options: ConsistentHashOptions = {}) {
    this.virtualNodes = options.virtualNodes ?? 160;
  }

  select<P extends Provider>(providers: readonly P[], ctx: SelectContext): P | undefined {
    if (providers.length <= 1 || ctx.key === undefined) return this.fallback.select(providers);
    const ids = providers.map((p) => p.instance.instanceId);
    const joined = ids.join('\n');
    if (joined !== this.ringIds) this.build(ids, joined);
    const owner = this.lookup(hash32(ctx.key));
    return providers.find((p) => p.instance.instanceId === owner) ?? providers[0];
  }

  private build(ids: string[], joined: string): void {
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
    this.ringIds = joined;
  }

  private lookup(h: number): string {
    const pts = this.points;
    let lo = 0;
    let hi = pts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (pts[mid] < h) lo = mid + 1;
      else hi = mid;
    }
    return this.owners[lo === pts.length ? 0 : lo];
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
