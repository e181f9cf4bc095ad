/**
 * `npm run bench [-- group ...]`: runs the benchmark groups (bench/<group>.ts, each exporting
 * `run(): Promise<Figures>`), prints each group's table and merges the figures into bench/results.json.
 * The services are brought up by scripts/bench.sh, as npm test does.
 */
import { printTable, writeResults, type Figures } from './results';

export const GROUPS = ['rpc', 'tx', 'pg', 'events', 'ha'] as const;

async function main(): Promise<void> {
  const asked = process.argv.slice(2).filter((a) => !a.startsWith('-'));
  const groups = asked.length > 0 ? asked : [...GROUPS];
  const unknown = groups.filter((g) => !(GROUPS as readonly string[]).includes(g));
  if (unknown.length > 0) {
    console.error(`bench: unknown group(s) ${unknown.join(', ')} (there are ${GROUPS.join(', ')})`);
    process.exitCode = 2;
    return;
  }
  const all: Figures = {};
  let failed = 0;
  for (const g of groups) {
    let mod: { run?: () => Promise<Figures> };
    try {
      mod = await import(`./${g}`);
    } catch (err) {
      failed++;
      console.error(`bench ${g}: not available (${(err as Error).message.split('\n')[0]})`);
      continue;
    }
    if (!mod.run) continue;
    try {
      const figures = await mod.run();
      printTable(`bench ${g}`, figures);
      Object.assign(all, figures);
      writeResults(figures);
    } catch (err) {
      failed++;
      console.error(`bench ${g} failed: ${(err as Error).stack ?? err}`);
    }
  }
  if (failed > 0) process.exitCode = 1;
}

void main();
