/**
 * The bookkeeping behind a Prometheus counter fed from sources that keep running counts of their own (a
 * subscription's or producer's `stats`, a Dmtp's): sources are tracked under a label value (several under one add
 * up); an untracked source leaves its counts in the totals; one tracked again adds only what it counted since; and
 * each scrape adds what is new, so the counter never goes back. No prom-client here: the metric classes
 * (events/metrics.ts, txapi/initiator-metrics.ts) call `increment` from their counters' `collect`.
 */
export class CounterTotals<S extends object> {
  private readonly live = new Map<S, { label: string; base: ReadonlyMap<string, number> }>();
  /** A source's counts when it was untracked, should it be tracked again. */
  private readonly untrackedAt = new WeakMap<S, ReadonlyMap<string, number>>();
  /** Per label and series: the counts of sources no longer tracked, and what the counter has already added. */
  private readonly retired = new Map<string, number>();
  private readonly added = new Map<string, number>();
  /** Every label value ever tracked: its series go on being exported. */
  readonly labels = new Set<string>();

  constructor(
    private readonly series: readonly string[],
    private readonly read: (source: S, series: string) => number,
  ) {}

  /** The label `source` is tracked under now, if it is. */
  labelOf(source: S): string | undefined {
    return this.live.get(source)?.label;
  }

  /** The sources tracked now, with their labels. */
  entries(): [S, string][] {
    return [...this.live].map(([s, t]) => [s, t.label]);
  }

  /** Tracks `source` under `label` (the caller refuses one tracked already); returns the undo, a no-op after the first. */
  track(source: S, label: string): () => void {
    const t = { label, base: this.untrackedAt.get(source) ?? new Map<string, number>() };
    this.live.set(source, t);
    this.labels.add(label);
    return () => {
      if (this.live.get(source) !== t) return;
      this.live.delete(source);
      const last = new Map(this.series.map((s) => [s, this.read(source, s)]));
      for (const s of this.series) {
        const key = `${label}\u0000${s}`;
        this.retired.set(key, (this.retired.get(key) ?? 0) + last.get(s)! - (t.base.get(s) ?? 0));
      }
      this.untrackedAt.set(source, last);
    };
  }

  /** What the counter of (`label`, `series`) must add now: the totals' growth since the last call. */
  increment(label: string, series: string): number {
    const key = `${label}\u0000${series}`;
    let n = this.retired.get(key) ?? 0;
    for (const [source, t] of this.live)
      if (t.label === label) n += this.read(source, series) - (t.base.get(series) ?? 0);
    const seen = this.added.get(key) ?? 0;
    this.added.set(key, Math.max(seen, n));
    return Math.max(0, n - seen);
  }
}
