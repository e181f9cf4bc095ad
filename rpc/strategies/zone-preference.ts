import { RoundRobinStrategy } from './round-robin';
import type { Provider, SelectContext, Strategy } from './strategy';

export interface ZonePreferenceOptions {
  /** The caller's zone when the call context does not name one. */
  zone?: string;
  /** Picks among the preferred providers (default round robin). */
  inner?: Strategy;
}

/** Providers in the caller's zone when there are any, every provider otherwise; `inner` picks among them. */
export class ZonePreferenceStrategy implements Strategy {
  private readonly zone?: string;
  private readonly inner: Strategy;

  constructor(options: ZonePreferenceOptions = {}) {
    this.zone = options.zone;
    this.inner = options.inner ?? new RoundRobinStrategy();
  }

  select<P extends Provider>(providers: readonly P[], ctx: SelectContext): P | undefined {
    const zone = ctx.zone ?? this.zone;
    if (zone) {
      const local = providers.filter((p) => p.instance.zone === zone);
      if (local.length > 0) return this.inner.select(local, ctx);
    }
    return this.inner.select(providers, ctx);
  }
}
