/**
 * Client-side subsetting: which instances of a large service one client connects to and calls.
 *
 * Every client keeping a connection (a multiplexed stream) to every instance costs clients × instances of them:
 * a thousand clients of a thousand-instance service hold a million streams, each with its keep-alives and
 * buffers, most idle. With `subsetSize: k` a client uses only k instances, chosen by rendezvous (highest random
 * weight) hashing of its `subsetKey` with each instance id: the k instances with the highest scores. So
 *
 * - clients with different keys spread evenly over the instances (each instance serves ~clients·k/instances),
 * - clients with the same key share a subset (a fixed key per process gives the same subset across restarts),
 * - an instance leaving changes only the subsets that held it (each takes the next-ranked instance in its place),
 *   and one joining enters only the subsets where it outranks the last member — no reshuffle of the rest.
 *
 * With a `zone`, the caller's zone fills the subset first and other zones only what it leaves. Members that are
 * `out` (ejected for failing) stay in the subset but do not count toward its size: the next-ranked instances
 * stand in for them until they are back — at most `size` of them, so a client cut off from every instance (its
 * own network down) does not end up connected to all of them. Pure logic: no I/O, no timers.
 */
import { createHash } from 'node:crypto';
import type { ServiceInstance } from '../registry/types';

export class SubsetChooser {
  /** Each instance id's score for this key (an id's score never changes, so it is hashed once). */
  private scores = new Map<string, number>();

  constructor(
    readonly size: number,
    readonly key: string,
    readonly zone?: string,
  ) {}

  /**
   * The subset of `instances` (all of them when they are `size` or fewer), highest ranked first: the `size`
   * highest ranked that are not `out`, and those that are out ranked among them; `2 × size` at most.
   */
  choose(instances: readonly ServiceInstance[], out?: (instanceId: string) => boolean): ServiceInstance[] {
    if (this.scores.size > 2 * instances.length + 64) this.scores = new Map(); // forget ids long gone
    const ranked = instances.map((instance) => ({
      instance,
      local: this.zone !== undefined && instance.zone === this.zone,
      score: this.score(instance.instanceId),
    }));
    ranked.sort(
      (a, b) =>
        Number(b.local) - Number(a.local) ||
        b.score - a.score ||
        (a.instance.instanceId < b.instance.instanceId ? -1 : 1),
    );
    if (!out) return ranked.slice(0, this.size).map((r) => r.instance);
    const chosen: ServiceInstance[] = [];
    let counted = 0;
    for (const { instance } of ranked) {
      if (counted === this.size || chosen.length === 2 * this.size) break;
      chosen.push(instance);
      if (!out(instance.instanceId)) counted++;
    }
    return chosen;
  }

  private score(instanceId: string): number {
    let s = this.scores.get(instanceId);
    if (s === undefined) {
      // 48 bits of an md5 of the pair: well spread, and ties (broken by id) practically never happen.
      const d = createHash('md5').update(this.key).update('\0').update(instanceId).digest();
      s = d.readUIntBE(0, 6);
      this.scores.set(instanceId, s);
    }
    return s;
  }
}
