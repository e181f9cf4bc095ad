/**
 * Stands in for a legacy loyalty system that cannot take part in two-phase commit: it only knows "hold these
 * points under this key", "confirm the hold" and "cancel the hold" — like many REST back ends. Kept in one JSON
 * file so it outlives the process, and slow on purpose for some customers (those whose id starts with `slow-`,
 * "on the old mainframe"), so that the adapter in examples/loyalty.ts has a timeout to hit.
 *
 * Rules a system must follow to sit behind DMTP's reservation adapter (txapi/resources/reservation.ts):
 * confirm and cancel are idempotent, cancel accepts a key never held, and a hold arriving after its cancel is
 * refused (a tombstone), so a hold that lands late, after the transaction gave up on it, never sticks.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export type HoldState = 'held' | 'confirmed' | 'cancelled';

export interface Hold {
  orderId: string;
  customer: string;
  points: number;
  state: HoldState;
}

export interface LegacyPointsOptions {
  /** The file the ledger lives in. */
  file: string;
  /** How long a hold takes for a `slow-` customer. */
  slowMs: number;
}

export class LegacyPoints {
  private readonly holds: Record<string, Hold>;

  constructor(private readonly o: LegacyPointsOptions) {
    fs.mkdirSync(path.dirname(o.file), { recursive: true });
    this.holds = fs.existsSync(o.file)
      ? (JSON.parse(fs.readFileSync(o.file, 'utf8')) as Record<string, Hold>)
      : {};
  }

  /** Holds points under `key`; refused if the key was cancelled before (the late-hold tombstone). */
  async hold(key: string, h: Omit<Hold, 'state'>): Promise<void> {
    await sleep(h.customer.startsWith('slow-') ? this.o.slowMs : 2);
    const now = this.holds[key];
    if (now?.state === 'cancelled') throw new Error(`hold ${key} was cancelled before it arrived`);
    if (now) return; // a repeated hold
    this.holds[key] = { ...h, state: 'held' };
    this.save();
  }

  state(key: string): HoldState | undefined {
    return this.holds[key]?.state;
  }

  async confirm(key: string): Promise<void> {
    const h = this.holds[key];
    if (!h) throw new Error(`no hold ${key} to confirm`);
    if (h.state === 'cancelled') throw new Error(`hold ${key} was cancelled`);
    h.state = 'confirmed';
    this.save();
  }

  async cancel(key: string): Promise<void> {
    const h = this.holds[key];
    if (h?.state === 'confirmed') throw new Error(`hold ${key} was confirmed`);
    this.holds[key] = { ...(h ?? { orderId: '', customer: '', points: 0 }), state: 'cancelled' };
    this.save();
  }

  /** Write-then-rename, so a crash never leaves half a ledger. */
  private save(): void {
    const tmp = `${this.o.file}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(this.holds));
    fs.renameSync(tmp, this.o.file);
  }
}

/** Reads a ledger file (for the demo's checks). */
export function readLedger(file: string): Record<string, Hold> {
  return fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, Hold>) : {};
}
