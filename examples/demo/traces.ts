/**
 * The demo's tracing check. Every service runs with DMTP_TRACING=1 and the SDK of examples/otel-file.cjs preloaded,
 * each writing its spans to a file of its own in the run's spans folder. Each placed order must be ONE trace across
 * those processes: the order service's `dmtp.transaction` span (found by the order's xid), the business calls
 * served by inventory, payment and loyalty, the coordinator's Commit, the Prepare each participant served, and
 * shipping's handling of the OrderPlaced event — carried there by the event's headers through the coordinator's
 * relay.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SpanKind } from '@opentelemetry/api';
import type { Check, Placed } from './checks';

export interface SpanLine {
  name: string;
  kind: SpanKind;
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  attributes: Record<string, unknown>;
  /** The file it came from: one per process. */
  process: string;
}

/** Every span of every file in `dir` (a line a killed process left torn is skipped). */
export function readSpans(dir: string): SpanLine[] {
  if (!fs.existsSync(dir)) return [];
  const spans: SpanLine[] = [];
  for (const file of fs.readdirSync(dir).filter((f) => f.endsWith('.jsonl'))) {
    for (const line of fs.readFileSync(path.join(dir, file), 'utf8').split('\n')) {
      if (!line) continue;
      try {
        spans.push({ ...(JSON.parse(line) as Omit<SpanLine, 'process'>), process: file });
      } catch {
        // the last line of a process killed while writing it
      }
    }
  }
  return spans;
}

/** What each placed order's trace must hold: [span name, kind]. */
function required(topic: string): [string, SpanKind][] {
  return [
    ['shop.v1.Inventory/Reserve', SpanKind.SERVER],
    ['shop.v1.Payment/Charge', SpanKind.SERVER],
    ['shop.v1.Loyalty/Award', SpanKind.SERVER],
    ['dmtp.v1.Coordinator/Commit', SpanKind.SERVER],
    ['dmtp.v1.Participant/Prepare', SpanKind.SERVER],
    [`process ${topic}`, SpanKind.CONSUMER],
  ];
}

export function tracesCheck(dir: string, placed: Placed[], topic: string): Check {
  const spans = readSpans(dir);
  const byTrace = new Map<string, SpanLine[]>();
  const txByXid = new Map<string, SpanLine>();
  for (const s of spans) {
    const list = byTrace.get(s.traceId);
    if (list) list.push(s);
    else byTrace.set(s.traceId, [s]);
    if (s.name === 'dmtp.transaction') txByXid.set(String(s.attributes['dmtp.xid']), s);
  }
  const wanted = required(topic);
  const broken: string[] = [];
  let spanCount = 0;
  let processCount = 0;
  for (const p of placed) {
    const tx = txByXid.get(p.xid);
    if (!tx) {
      broken.push(`${p.orderId}: no dmtp.transaction span for ${p.xid}`);
      continue;
    }
    const trace = byTrace.get(tx.traceId)!;
    const missing = wanted.filter(([name, kind]) => !trace.some((s) => s.name === name && s.kind === kind));
    if (missing.length > 0) broken.push(`${p.orderId}: no ${missing.map(([name]) => name).join(', ')}`);
    spanCount += trace.length;
    processCount += new Set(trace.map((s) => s.process)).size;
  }
  const ok = placed.length > 0 && broken.length === 0;
  const n = Math.max(placed.length, 1);
  return {
    name: 'each placed order is one trace across the services (OpenTelemetry)',
    ok,
    detail: ok
      ? `${placed.length} traces, ${(spanCount / n).toFixed(0)} spans over ${(processCount / n).toFixed(1)} processes each on average (${spans.length} spans in all)`
      : `${broken.length} of ${placed.length} placed orders not traced whole: ${broken.slice(0, 3).join('; ')}`,
  };
}
