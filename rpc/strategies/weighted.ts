import type { Provider, SelectContext, Strategy } from './strategy';

/**
 * A random provider, with probability proportional to its registered `weight` (weight 0 takes no traffic).
 * Random rather than smooth round robin: no per-provider state to keep in step with a changing list.
 */
export class WeightedStrategy implements Strategy {
  constructor(private readonly rand: () => number = Math.random) {}

  select<P extends Provider>(providers: readonly P[], _ctx?: SelectContext): P | undefined {
    let total = 0;
    for (const p of providers) total += weightOf(p);
    if (total <= 0) return undefined;
    let r = this.rand() * total;
    for (const p of providers) {
      r -= weightOf(p);
      if (r < 0) return p;
    }
    for (let i = providers.length - 1; i >= 0; i--) if (weightOf(providers[i]) > 0) return providers[i]; // rounding
    return undefined;
  }
}

function weightOf(p: Provider): number {
  const w = p.instance.weight;
  return Number.isFinite(w) && w > 0 ? w : 0;
}
