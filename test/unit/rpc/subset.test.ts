import { strict as assert } from 'node:assert';
import type { ServiceInstance } from '../../../registry';
import { SubsetChooser } from '../../../rpc/subset';

const instance = (id: string, zone = ''): ServiceInstance => ({
  service: 's',
  instanceId: id,
  address: `10.0.0.1:${id.length}`,
  version: '',
  zone,
  weight: 1,
  metadata: {},
  startedAt: 0,
});
const ids = (list: ServiceInstance[]) => list.map((i) => i.instanceId).sort();
const fleet = (n: number, zone = '') => Array.from({ length: n }, (_, i) => instance(`i${i}`, zone));

describe('rpc SubsetChooser (rendezvous hashing)', () => {
  it('picks size instances, the same ones for the same key whatever the order given, all when there are fewer', () => {
    const all = fleet(20);
    const a = ids(new SubsetChooser(5, 'client-a').choose(all));
    assert.equal(a.length, 5);
    assert.deepEqual(ids(new SubsetChooser(5, 'client-a').choose([...all].reverse())), a);
    assert.notDeepEqual(ids(new SubsetChooser(5, 'client-b').choose(all)), a, 'another key, another subset');
    assert.deepEqual(ids(new SubsetChooser(5, 'client-a').choose(fleet(3))), ['i0', 'i1', 'i2']);
  });

  it('spreads 200 clients evenly over 40 instances', () => {
    const all = fleet(40);
    const load = new Map<string, number>(all.map((i) => [i.instanceId, 0]));
    for (let c = 0; c < 200; c++) {
      for (const i of new SubsetChooser(6, `client-${c}`).choose(all))
        load.set(i.instanceId, load.get(i.instanceId)! + 1);
    }
    // 30 subsets per instance on average; hashing, not coordination, keeps every one within half of it.
    const counts = [...load.values()];
    assert.ok(Math.min(...counts) >= 15 && Math.max(...counts) <= 45, counts.join(','));
  });

  it('an instance leaving changes only the subsets that held it, by one member; one joining displaces at most one', () => {
    const all = fleet(30);
    for (let c = 0; c < 50; c++) {
      const chooser = new SubsetChooser(5, `client-${c}`);
      const before = ids(chooser.choose(all));
      const gone = all.filter((i) => i.instanceId !== 'i7');
      const after = ids(chooser.choose(gone));
      const lost = before.filter((id) => !after.includes(id));
      if (before.includes('i7')) assert.deepEqual(lost, ['i7'], `client-${c}`);
      else assert.deepEqual(after, before, `client-${c}: unchanged`);

      const joined = ids(chooser.choose([...all, instance('new')]));
      const displaced = before.filter((id) => !joined.includes(id));
      assert.ok(displaced.length <= 1, `client-${c}: ${displaced.join()}`);
      assert.equal(displaced.length, joined.includes('new') ? 1 : 0);
    }
  });

  it('keeps members that are out, the next-ranked instances standing in for them until they are back', () => {
    const all = fleet(20);
    const chooser = new SubsetChooser(3, 'k');
    const ranked = chooser.choose(all, () => false).map((i) => i.instanceId);
    assert.deepEqual([...ranked].sort(), ids(chooser.choose(all)), 'nothing out: the same subset');
    const wide = new SubsetChooser(20, 'k').choose(all).map((i) => i.instanceId); // every instance, ranked
    const [first, second, third, fourth] = wide;
    const out = new Set([second]);
    assert.deepEqual(
      chooser.choose(all, (id) => out.has(id)).map((i) => i.instanceId),
      [first, second, third, fourth],
      'the one out kept, the next-ranked in its place',
    );
    out.add(first).add(third);
    assert.deepEqual(
      chooser.choose(all, (id) => out.has(id)).map((i) => i.instanceId),
      wide.slice(0, 6),
      'three out: three stand in',
    );
    assert.deepEqual(ids(chooser.choose(all.slice(0, 2), () => true)), ['i0', 'i1'], 'all out: all kept');
    assert.deepEqual(
      chooser.choose(all, () => true).map((i) => i.instanceId),
      wide.slice(0, 6),
      'every instance out: as many stand-ins as the size, no more',
    );
  });

  it("fills the subset from the caller's zone first, and from other zones only what it leaves", () => {
    const all = [...fleet(20, 'z2'), instance('local-1', 'z1'), instance('local-2', 'z1')];
    const chosen = new SubsetChooser(4, 'k', 'z1').choose(all);
    assert.deepEqual(
      chosen.slice(0, 2).map((i) => i.instanceId),
      new SubsetChooser(2, 'k').choose(all.filter((i) => i.zone === 'z1')).map((i) => i.instanceId),
    );
    assert.deepEqual(
      chosen.slice(2).map((i) => i.zone),
      ['z2', 'z2'],
    );
    assert.deepEqual(ids(new SubsetChooser(2, 'k', 'z1').choose(all)), ['local-1', 'local-2']);
  });
});
