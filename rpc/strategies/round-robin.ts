import type { Provider, SelectContext, Strategy } from './strategy';

/** Each provider in turn. The counter is per strategy (per client), not per provider list. */
export class RoundRobinStrategy implements Strategy {
  private counter = 0;

  select<P extends Provider>(providers: readonly P[], _ctx?: SelectContext): P | undefined {
    if (providers.length === 0) return undefined;
    this.counter = (this.counter + 1) % 0x7fffffff;
    return providers[this.counter % providers.length];
  }
}
