/**
 * bench/results.json: every figure next to its baseline measured in the same run, in the shape of
 * shared/BENCH.md, plus `groups`: when each group last ran, and why a figure of that run is absent.
 *
 * A run of one group keeps the other groups' figures already in the file and drops every old figure of its
 * own first (by the group's id prefixes), so a figure it did not produce this time (a part that failed or was
 * skipped, a group that threw) is absent rather than an old value under a fresh time. A figure that could not
 * be measured is left out, never written as zero.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface Figure {
  /** The measured value; for a figure against a baseline, the measured rate (not the ratio). */
  value: number;
  unit: string;
  /** The same quantity measured in the same run without the thing being measured, in `unit`. */
  baseline?: number;
  /** value ÷ baseline. */
  ratio?: number;
  /** Goal as text, e.g. "ratio >= 0.9" or "<= 100", shown in the table. */
  goal?: string;
  note?: string;
}

export type Figures = Record<string, Figure>;

/** Each group's figure ids start with one of its prefixes: a run of the group replaces all of them. */
export const GROUP_PREFIXES = {
  rpc: ['rpc.', 'registry.'],
  tx: ['tx.', 'coordinator.'],
  pg: ['pg.'],
  events: ['events.'],
  ha: ['ha.'],
} as const satisfies Record<string, readonly string[]>;

export type Group = keyof typeof GROUP_PREFIXES;
export const GROUPS = Object.keys(GROUP_PREFIXES) as Group[];

/** When a group last ran; the group's figures in the file are all from that run. */
export interface GroupRun {
  when: string;
  /** The group threw: none of its figures is in the file. */
  error?: string;
  /** Figures of that run that could not be measured, with why. */
  absent?: Record<string, string>;
}

export interface Results {
  /** When the file was last written (by any group): see `groups` for when each figure was measured. */
  when: string;
  machine: { cpus: number; node: string };
  groups: Partial<Record<Group, GroupRun>>;
  figures: Figures;
}

/** bench/results.json of the source tree (scripts/bench.sh names it: the benchmarks run compiled, elsewhere). */
export const RESULTS_FILE = process.env.BENCH_RESULTS_FILE || path.join(__dirname, 'results.json');

/**
 * A figure measured against a baseline in the same run, in BENCH.md's shape: value = the measured rate,
 * baseline = the baseline's, both in `unit`, ratio = value ÷ baseline (of the unrounded numbers).
 */
export function ratioFigure(
  value: number,
  baseline: number,
  unit: string,
  extra: Partial<Figure> = {},
): Figure {
  return {
    value: round(value),
    unit,
    baseline: round(baseline),
    ratio: round(value / baseline, 3),
    ...extra,
  };
}

export function round(x: number, digits = 1): number {
  const f = Math.pow(10, digits);
  return Math.round(x * f) / f;
}

/** The p-th percentile of ascending `sorted`; NaN when empty. Infinity entries (never arrived) count. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

/**
 * Latencies from `sentAt` to `arrivedAt` (same keys, ms), ascending; one that never arrived is +Infinity, so a
 * percentile past the share of lost ones is Infinity (unmeasurable), never a latency of the ones that made it.
 */
export function arrivalLatencies(sentAt: Map<string, number>, arrivedAt: Map<string, number>): number[] {
  return [...sentAt]
    .map(([k, at]) => {
      const arrived = arrivedAt.get(k);
      return arrived === undefined ? Infinity : Math.max(0, arrived - at);
    })
    .sort((a, b) => a - b);
}

/** The group whose prefixes `id` falls under, if any. */
export function groupOf(id: string): Group | undefined {
  return GROUPS.find((g) => GROUP_PREFIXES[g].some((p) => id.startsWith(p)));
}

/**
 * Why `f` cannot be written, or undefined when it can. A value, baseline or ratio that is not a finite number
 * > 0 was not measured (nothing succeeded: a rate of 0, a percentile of nothing, a ratio to a zero baseline);
 * only a latency may be 0 (e.g. no call reached a leaving instance after it left). A `.ratio` figure must carry
 * all three of value, baseline and ratio.
 */
export function unmeasured(id: string, f: Figure): string | undefined {
  const bad = (name: string, x: number, zeroOk = false) =>
    Number.isFinite(x) && (x > 0 || (zeroOk && x === 0)) ? undefined : `${name} is ${x}`;
  const why =
    bad('value', f.value, f.unit === 'ms') ??
    (f.baseline === undefined ? undefined : bad('baseline', f.baseline)) ??
    (f.ratio === undefined ? undefined : bad('ratio', f.ratio));
  if (why) return why;
  if (id.endsWith('.ratio') && (f.baseline === undefined || f.ratio === undefined))
    return 'a .ratio figure needs value, baseline and ratio (use ratioFigure)';
  return undefined;
}

/** Splits a group's figures into those that can be written and, with why, those that cannot. */
export function measurable(figures: Figures): { figures: Figures; absent: Record<string, string> } {
  const ok: Figures = {};
  const absent: Record<string, string> = {};
  for (const [id, f] of Object.entries(figures)) {
    const why = unmeasured(id, f);
    if (why) absent[id] = f.note ? `${why} (${f.note})` : why;
    else ok[id] = f;
  }
  return { figures: ok, absent };
}

/**
 * The file's new content after one run of `group`: every old figure of the group dropped, the other groups'
 * figures and runs kept, then the run's measurable figures added (none when it threw).
 */
export function mergeResults(
  old: unknown,
  group: Group,
  outcome: Figures | Error,
  when: string,
  machine: Results['machine'],
): Results {
  const prev = (old ?? {}) as Partial<Results>;
  const figures: Figures = {};
  for (const [id, f] of Object.entries(prev.figures ?? {})) {
    if (groupOf(id) !== group) figures[id] = f;
  }
  let groups: Results['groups'] = { ...(prev.groups ?? {}) };
  if (!prev.groups && prev.when) {
    // a file from before `groups`: its figures are as old as its `when`
    groups = Object.fromEntries(
      GROUPS.filter((g) => Object.keys(figures).some((id) => groupOf(id) === g)).map((g) => [
        g,
        { when: prev.when! },
      ]),
    );
  }
  const run: GroupRun = { when };
  if (outcome instanceof Error) {
    run.error = outcome.message.split('\n')[0];
  } else {
    const m = measurable(outcome);
    for (const [id, f] of Object.entries(m.figures)) {
      if (groupOf(id) === group) figures[id] = f;
      else m.absent[id] = `not under the ${group} group's prefixes ${GROUP_PREFIXES[group].join(', ')}`;
    }
    if (Object.keys(m.absent).length > 0) run.absent = m.absent;
  }
  groups[group] = run;
  return { when, machine, groups, figures };
}

/** Writes one run of `group` into `file` (see mergeResults) and returns the file's new content. */
export function writeResults(group: Group, outcome: Figures | Error, file = RESULTS_FILE): Results {
  let old: unknown = {};
  try {
    old = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    old = {};
  }
  const doc = mergeResults(old, group, outcome, new Date().toISOString(), {
    cpus: os.cpus().length,
    node: process.version,
  });
  fs.writeFileSync(file + '.tmp', JSON.stringify(doc, null, 2) + '\n');
  fs.renameSync(file + '.tmp', file);
  return doc;
}

/** The table of a group's figures; those that could not be measured are listed under it, with why. */
export function printTable(title: string, all: Figures): void {
  const { figures, absent } = measurable(all);
  const rows = Object.entries(figures).map(([id, f]) => [
    id,
    `${f.value} ${f.unit}`,
    f.baseline === undefined ? '' : `${f.baseline} ${f.unit}`,
    f.ratio === undefined ? '' : String(f.ratio),
    f.goal ?? '',
    f.note ?? '',
  ]);
  const head = ['figure', 'value', 'baseline', 'ratio', 'goal', 'note'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(widths[i])).join('  ');
  console.log(`\n${title}\n${line(head)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}`);
  for (const r of rows) console.log(line(r));
  for (const [id, why] of Object.entries(absent)) console.log(`${id}: not measured, left out: ${why}`);
}
