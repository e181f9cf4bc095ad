/**
 * Scraping a `/metrics` endpoint over real HTTP and reading the Prometheus text format, for the metrics tests.
 * Each scrape opens its own connection (no agent), so nothing is left open when the server closes.
 */
import { get } from 'node:http';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export function scrape(
  address: string,
  path = '/metrics',
): Promise<{ status: number; type: string; text: string }> {
  return new Promise((resolve, reject) => {
    const req = get(`http://${address}${path}`, { agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), text }),
      );
    });
    req.on('error', reject);
  });
}

/** Every sample line of an exposition (comments skipped). */
export function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a Prometheus sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

/** The sum of the samples named `name` whose labels include `labels`. */
export function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((n, s) => n + s.value, 0);
}

/** Scrapes and parses in one go. */
export async function samplesAt(address: string): Promise<Sample[]> {
  const r = await scrape(address);
  if (r.status !== 200) throw new Error(`GET /metrics answered ${r.status}: ${r.text}`);
  return parse(r.text);
}

/** An xid as common/xid.ts mints them: `<owner>:<ms base36>:<tag+counter base36>`. */
export const XID_LIKE = /^[A-Za-z0-9._-]+:[0-9a-z]+:[0-9a-z]+$/;

/** Every label value of every sample, for the "no unbounded label" checks. */
export function labelValues(samples: Sample[]): string[] {
  return [...new Set(samples.flatMap((s) => Object.values(s.labels)))];
}
