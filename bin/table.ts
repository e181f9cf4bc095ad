/**
 * Human output: column tables and key/value blocks, plain text (no colours, no box drawing) so they survive
 * pipes, `grep` and narrow terminals. Scripts use `--json` instead.
 */

export type Cell = string | number | boolean | null | undefined;

function text(c: Cell): string {
  if (c === null || c === undefined || c === '') return '-';
  // One row per line, whatever a value contains.
  return String(c).replace(/[\r\n\t]+/g, ' ');
}

/** Long cells are cut with '…' so one runaway value (an error text) keeps the table readable. */
function cut(s: string, max: number): string {
  return s.length > max ? s.slice(0, Math.max(1, max - 1)) + '…' : s;
}

export interface TableOptions {
  /** Longest cell kept whole (default 60). */
  maxCellWidth?: number;
}

/** Columns separated by two spaces, headers in capitals, no trailing spaces; '-' for an empty cell. */
export function renderTable(headers: string[], rows: Cell[][], options: TableOptions = {}): string {
  const max = options.maxCellWidth ?? 60;
  const cells = rows.map((r) => headers.map((_, i) => cut(text(r[i]), max)));
  const head = headers.map((h) => h.toUpperCase());
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i].length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return [line(head), ...cells.map(line)].join('\n') + '\n';
}

/** `key:  value` lines with the values aligned; pairs whose value is undefined are left out. */
export function renderFields(pairs: [string, Cell][]): string {
  const kept = pairs.filter(([, v]) => v !== undefined);
  const width = Math.max(0, ...kept.map(([k]) => k.length)) + 1;
  return kept.map(([k, v]) => `${(k + ':').padEnd(width)}  ${text(v)}`).join('\n') + '\n';
}
