import { randomInt, type Provider, type RandomInt, type SelectContext, type Strategy } from './strategy';

/** A uniformly random provider. */
export class RandomStrategy implements Strategy {
  constructor(private readonly rand: RandomInt = randomInt) {}

  select<P extends Provider>(providers: readonly P[], _ctx?: SelectContext): P | undefined {
    return providers.length === 0 ? undefined : providers[this.rand(providers.length)];
  }
}
