/**
 * bench/results.json: every figure next to its baseline measured in the same run, in the shape of
 * shared/BENCH.md. A run of one group keeps the other groups' figures already in the file; a figure that
 * could not be measured is left out, never written as zero.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface Figure {
  value: number;
  unit: string;
  baseline?: number;
  ratio?: number;
  /** Goal as text, e.g. ">= 0.9", shown in the table. */
  goal?: string;
  note?: string;
}

export type Figures = Record<string, Figure>;

export const RESULTS_FILE = path.join(__dirname, 'results.json');

/** A figure with its ratio to a baseline measured in the same run. */
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

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

/** Merges `figures` into bench/results.json (keeping other groups' figures) and returns the merged set. */
export function writeResults(figures: Figures): Figures {
  let old: { figures?: Figures } = {};
  try {
    old = JSON.parse(fs.readFileSync(RESULTS_FILE, 'utf8'));
  } catch {
    old = {};
  }
  const merged: Figures = { ...(old.figures ?? {}) };
  for (const [id, f] of Object.entries(figures)) {
    if (Number.isFinite(f.value)) merged[id] = f;
  }
  const doc = {
    when: new Date().toISOString(),
    machine: { cpus: os.cpus().length, node: process.version },
    figures: merged,
  };
  fs.writeFileSync(RESULTS_FILE + '.tmp', JSON.stringify(doc, null, 2) + '\n');
  fs.renameSync(RESULTS_FILE + '.tmp', RESULTS_FILE);
  return merged;
}

export function printTable(title: string, figures: Figures): void {
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
}
