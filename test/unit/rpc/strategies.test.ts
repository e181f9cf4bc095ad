import { strict as assert } from 'node:assert';
import type { ServiceInstance } from '../../../registry/types';
import {
  ConsistentHashStrategy,
  LeastOutstandingStrategy,
  RandomStrategy,
  resolveStrategy,
  RoundRobinStrategy,
  WeightedStrategy,
  ZonePreferenceStrategy,
  type Provider,
  type Strategy,
} from '../../../rpc/strategies';

function provider(id: string, extra: Partial<ServiceInstance> = {}, inFlight = 0): Provider {
  return {
    inFlight,
    instance: {
      service: 'svc',
      instanceId: id,
      address: `127.0.0.1:${1000 + id.length}`,
      version: '1',
      zone: '',
      weight: 1,
      metadata: {},
      startedAt: 0,
      ...extra,
    },
  };
}

function counts(s: Strategy, providers: Provider[], n: number, key?: (i: number) => string) {
  const c: Record<string, number> = {};
  for (const p of providers) c[p.instance.instanceId] = 0;
  for (let i = 0; i < n; i++) {
    const p = s.select(providers, { method: '/m', key: key?.(i) });
    assert.ok(p);
    c[p.instance.instanceId]++;
  }
  return c;
}

const three = () => [provider('a'), provider('b'), provider('c')];

describe('rpc strategies', () => {
  it('round robin gives each provider exactly its turn', () => {
    const c = counts(new RoundRobinStrategy(), three(), 3000);
    assert.deepEqual(Object.values(c), [1000, 1000, 1000]);
  });

  it('random spreads evenly within 10%', () => {
    const c = counts(new RandomStrategy(), three(), 6000);
    for (const v of Object.values(c)) assert.ok(Math.abs(v - 2000) < 200, JSON.stringify(c));
  });

  it('weighted follows the registered weights and skips weight 0', () => {
    const ps = [provider('a', { weight: 1 }), provider('b', { weight: 3 }), provider('z', { weight: 0 })];
    const c = counts(new WeightedStrategy(), ps, 8000);
    assert.equal(c.z, 0);
    assert.ok(Math.abs(c.a - 2000) < 250 && Math.abs(c.b - 6000) < 250, JSON.stringify(c));
    assert.equal(new WeightedStrategy().select([provider('z', { weight: 0 })], { method: '/m' }), undefined);
  });

  it('least outstanding (two choices) favours the less loaded and never picks the busiest of three', () => {
    const ps = [provider('idle', {}, 0), provider('some', {}, 5), provider('busy', {}, 50)];
    const c = counts(new LeastOutstandingStrategy(), ps, 3000);
    assert.equal(c.busy, 0, JSON.stringify(c));
    assert.ok(c.idle > c.some * 1.5, JSON.stringify(c));
  });

  it('zone preference keeps calls in the caller zone and falls back to every zone', () => {
    const ps = [provider('a', { zone: 'z1' }), provider('b', { zone: 'z2' }), provider('c', { zone: 'z1' })];
    const s = new ZonePreferenceStrategy({ zone: 'z1' });
    const c = counts(s, ps, 1000);
    assert.equal(c.b, 0);
    assert.equal(c.a, 500);
    const other = s.select(ps, { method: '/m', zone: 'z3' });
    assert.ok(other);
    const onlyFar = counts(s, [provider('b', { zone: 'z2' })], 10);
    assert.equal(onlyFar.b, 10);
  });

  it('resolves strategies by name, class and instance, and rejects unknown names', () => {
    assert.ok(resolveStrategy('least-outstanding') instanceof LeastOutstandingStrategy);
    assert.ok(resolveStrategy(RandomStrategy) instanceof RandomStrategy);
    const rr = new RoundRobinStrategy();
    assert.equal(resolveStrategy(rr), rr);
    assert.ok(resolveStrategy() instanceof RoundRobinStrategy);
    assert.throws(() => resolveStrategy('fastest' as never), /unknown strategy 'fastest'/);
    for (const inherited of ['constructor', 'toString', '__proto__']) {
      assert.throws(() => resolveStrategy(inherited as never), /unknown strategy/, inherited);
    }
  });

  describe('consistent hash', () => {
    const keys = Array.from({ length: 4000 }, (_, i) => `order-${i}`);
    const owners = (s: Strategy, ps: Provider[]) =>
      new Map(keys.map((k) => [k, s.select(ps, { method: '/m', key: k })!.instance.instanceId]));

    it('keeps a key on one instance, whatever the order of the list', () => {
      const s = new ConsistentHashStrategy();
      const ps = three();
      const first = owners(s, ps);
      const again = owners(s, [...ps].reverse());
      assert.deepEqual([...again], [...first]);
    });

    it('spreads keys within 25% of an even share', () => {
      const c = counts(new ConsistentHashStrategy(), three(), keys.length, (i) => keys[i]);
      for (const v of Object.values(c))
        assert.ok(Math.abs(v - keys.length / 3) < keys.length / 12, JSON.stringify(c));
    });

    it('moves only ~1/N of the keys when an instance joins, all of them to the newcomer', () => {
      const s = new ConsistentHashStrategy();
      const before = owners(s, three());
      const after = owners(s, [...three(), provider('d')]);
      let moved = 0;
      for (const k of keys) {
        if (before.get(k) !== after.get(k)) {
          moved++;
          assert.equal(after.get(k), 'd', `${k} moved between old instances`);
        }
      }
      const share = moved / keys.length;
      assert.ok(share > 0.15 && share < 0.35, `moved ${share}`);
    });

    it('sends a key whose owner is left out (a retry, an ejection) where a ring without it would, then back', () => {
      const ps = [...three(), provider('d'), provider('e')];
      const s = new ConsistentHashStrategy();
      const full = owners(s, ps);
      const withoutB = ps.filter((p) => p.instance.instanceId !== 'b');
      const skipped = owners(s, withoutB);
      assert.deepEqual([...skipped], [...owners(new ConsistentHashStrategy(), withoutB)]);
      for (const k of keys) if (full.get(k) !== 'b') assert.equal(skipped.get(k), full.get(k), `${k} moved`);
      assert.deepEqual([...owners(s, ps)], [...full], 'with b offered again, its keys are back on it');
    });

    it('without a key falls back to a random provider', () => {
      const c = counts(new ConsistentHashStrategy(), three(), 3000);
      for (const v of Object.values(c)) assert.ok(v > 700, JSON.stringify(c));
    });
  });
});
