/**
 * Outlier ejection: an instance whose calls failed at the transport level `consecutiveFailures` times in a row
 * is left out of selection for `baseEjectionMs`, doubling with each ejection up to `maxEjectionMs`. The count of
 * ejections resets once the instance has served successfully for `maxEjectionMs` after its last ejection.
 * Selection ignores ejection when it would leave no instance (better to try than to fail unasked).
 */
import { systemClock, type Clock } from '../common/clock';

export interface OutlierEjectionOptions {
  /** Transport failures in a row that eject an instance (default 5). */
  consecutiveFailures?: number;
  /** First ejection time (default 1,000 ms). */
  baseEjectionMs?: number;
  /** Ceiling for the ejection time (default 30,000 ms). */
  maxEjectionMs?: number;
  clock?: Clock;
}

interface Health {
  failures: number;
  ejections: number;
  ejectedUntil: number;
  lastEjectedAt: number;
}

export class OutlierDetector {
  readonly consecutiveFailures: number;
  readonly baseEjectionMs: number;
  readonly maxEjectionMs: number;
  private readonly clock: Clock;
  private readonly health = new Map<string, Health>();
  /** The latest end of an ejection so far: before it, some instance may be out. */
  private ejectionsEndAt = 0;

  constructor(options: OutlierEjectionOptions = {}) {
    this.consecutiveFailures = options.consecutiveFailures ?? 5;
    this.baseEjectionMs = options.baseEjectionMs ?? 1_000;
    this.maxEjectionMs = options.maxEjectionMs ?? 30_000;
    this.clock = options.clock ?? systemClock;
  }

  onSuccess(id: string): void {
    const h = this.health.get(id);
    if (!h) return;
    h.failures = 0;
    if (h.ejections > 0 && this.clock.now() - h.lastEjectedAt > this.maxEjectionMs) h.ejections = 0;
    if (h.ejections === 0) this.health.delete(id);
  }

  /** Records a transport failure; true when this failure ejected the instance. */
  onFailure(id: string): boolean {
    let h = this.health.get(id);
    if (!h) this.health.set(id, (h = { failures: 0, ejections: 0, ejectedUntil: 0, lastEjectedAt: 0 }));
    const now = this.clock.now();
    if (h.ejectedUntil > now) return false; // already out; calls that were in flight do not extend it
    h.failures++;
    if (h.failures < this.consecutiveFailures) return false;
    const ms = Math.min(this.maxEjectionMs, this.baseEjectionMs * Math.pow(2, h.ejections));
    h.ejections++;
    h.failures = 0;
    h.ejectedUntil = now + ms;
    h.lastEjectedAt = now;
    this.ejectionsEndAt = Math.max(this.ejectionsEndAt, h.ejectedUntil);
    return true;
  }

  /** False when no instance is ejected now (O(1): callers skip looking at every instance); true when one may be. */
  anyEjected(): boolean {
    return this.ejectionsEndAt > this.clock.now();
  }

  isEjected(id: string): boolean {
    const h = this.health.get(id);
    return h !== undefined && h.ejectedUntil > this.clock.now();
  }

  /** When the instance's ejection ends (0 when it is not ejected). */
  ejectedUntil(id: string): number {
    const h = this.health.get(id);
    return h !== undefined && h.ejectedUntil > this.clock.now() ? h.ejectedUntil : 0;
  }

  now(): number {
    return this.clock.now();
  }

  /** Forgets an instance that left the registry. */
  forget(id: string): void {
    this.health.delete(id);
  }
}
