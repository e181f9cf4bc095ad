/**
 * Shared by the transaction benchmarks (bench/tx.ts, bench/pg.ts): a closed-loop driver at fixed concurrency
 * that counts successes and failures apart and keeps every latency, and the merge of several rounds.
 */
import { performance } from 'node:perf_hooks';
import { percentile } from './results';

export interface Sample {
  ok: number;
  failed: number;
  ms: number;
  latencies: number[];
  /** Latency of one part of each operation (e.g. the Commit call), when the operation reports it. */
  parts: number[];
  firstError?: string;
}

export interface Rate {
  rate: number;
  p50: number;
  p99: number;
  partP50: number;
  partP99: number;
  ok: number;
  failed: number;
  firstError?: string;
}

/**
 * `concurrency` loops running `op` for `ms`; an operation resolving to a number reports that as its part's
 * latency. A failed operation counts as failed, not in the rate or latencies.
 */
export async function drive(
  op: () => Promise<number | void>,
  ms: number,
  concurrency: number,
): Promise<Sample> {
  const s: Sample = { ok: 0, failed: 0, ms: 0, latencies: [], parts: [] };
  const start = performance.now();
  const end = start + ms;
  const loop = async () => {
    while (performance.now() < end) {
      const t = performance.now();
      try {
        const part = await op();
        s.latencies.push(performance.now() - t);
        if (typeof part === 'number') s.parts.push(part);
        s.ok++;
      } catch (err) {
        s.failed++;
        s.firstError ??= (err as Error)?.message ?? String(err);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  s.ms = performance.now() - start;
  return s;
}

export function merge(samples: Sample[]): Rate {
  const ok = samples.reduce((n, s) => n + s.ok, 0);
  const failed = samples.reduce((n, s) => n + s.failed, 0);
  const ms = samples.reduce((n, s) => n + s.ms, 0);
  const lat = samples.flatMap((s) => s.latencies).sort((a, b) => a - b);
  const parts = samples.flatMap((s) => s.parts).sort((a, b) => a - b);
  return {
    // nothing succeeded: no rate (NaN, left out of the results), never a rate of 0
    rate: ok > 0 ? (ok / ms) * 1000 : NaN,
    p50: percentile(lat, 50),
    p99: percentile(lat, 99),
    partP50: percentile(parts, 50),
    partP99: percentile(parts, 99),
    ok,
    failed,
    firstError: samples.find((s) => s.firstError)?.firstError,
  };
}

/** " (N failed: first error)" when something failed, '' otherwise: for notes. */
export function failures(r: Rate): string {
  return r.failed > 0 ? ` (${r.failed} failed: ${r.firstError})` : '';
}
