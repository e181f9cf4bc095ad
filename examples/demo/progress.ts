/**
 * What the demo shows while it runs: one live line (rewritten in place with `\r` on a terminal, a new line
 * every few seconds otherwise), with notes about what happens (an instance killed, restarted) printed above it.
 */
export interface Counts {
  done: number;
  total: number;
  placed: number;
  rejected: number;
  unknown: number;
}

export class Progress {
  private readonly tty = Boolean(process.stdout.isTTY);
  private readonly started = Date.now();
  private timer: NodeJS.Timeout | undefined;
  private lastLine = '';

  constructor(
    private readonly counts: () => Counts,
    private readonly everyMs = { tty: 200, plain: 3_000 },
  ) {}

  start(): void {
    this.timer = setInterval(() => this.draw(), this.tty ? this.everyMs.tty : this.everyMs.plain);
  }

  /** A line about something that happened, above the live line. */
  note(text: string): void {
    const at = ((Date.now() - this.started) / 1000).toFixed(1).padStart(5);
    if (this.tty) process.stdout.write(`\r\x1b[K`);
    process.stdout.write(`  [${at}s] ${text}\n`);
    if (this.tty && this.lastLine) process.stdout.write(this.lastLine);
  }

  stop(): void {
    clearInterval(this.timer);
    this.draw();
    if (this.tty) process.stdout.write('\n');
  }

  private draw(): void {
    const c = this.counts();
    const secs = (Date.now() - this.started) / 1000;
    const pct = c.total ? Math.floor((100 * c.done) / c.total) : 100;
    const width = 24;
    const bar = '#'.repeat(Math.round((width * pct) / 100)).padEnd(width, '.');
    const line =
      `  [${bar}] ${String(c.done).padStart(4)}/${c.total} orders  placed ${c.placed}  rejected ${c.rejected}` +
      (c.unknown ? `  unknown ${c.unknown}` : '') +
      `  ${(c.done / Math.max(secs, 0.001)).toFixed(1)} tx/s`;
    if (this.tty) {
      this.lastLine = `\r\x1b[K${line}`;
      process.stdout.write(this.lastLine);
    } else if (line !== this.lastLine) {
      this.lastLine = line;
      process.stdout.write(line + '\n');
    }
  }
}

/** The p-th percentile (0-100) of already sorted numbers, nearest rank. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}
