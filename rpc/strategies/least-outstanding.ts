import { randomInt, type Provider, type RandomInt, type SelectContext, type Strategy } from './strategy';

/**
 * Power of two choices: two distinct random providers, the one with fewer calls in flight wins. Nearly as good
 * as scanning for the least loaded, without herding every client onto the same momentarily idle instance.
 */
export class LeastOutstandingStrategy implements Strategy {
  constructor(private readonly rand: RandomInt = randomInt) {}

  select<P extends Provider>(providers: readonly P[], _ctx?: SelectContext): P | undefined {
    const n = providers.length;
    if (n <= 1) return providers[0];
    const i = this.rand(n);
    let j = this.rand(n - 1);
    if (j >= i) j++;
    const a = providers[i];
    const b = providers[j];
    return b.inFlight < a.inFlight ? b : a;
  }
}
