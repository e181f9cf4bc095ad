/**
 * `npm run bench [-- group ...]`: runs the benchmark groups (bench/<group>.ts, each exporting
 * `run(): Promise<Figures>`), prints each group's table and merges the figures into bench/results.json.
 * A group that fails leaves none of its figures in the file (its old ones are dropped too) and says so.
 * The services are brought up by scripts/bench.sh, as npm test does.
 */
import { GROUPS, GROUP_PREFIXES, printTable, writeResults, type Figures, type Group } from './results';

async function runGroup(g: Group): Promise<Figures> {
  const mod = (await import(`./${g}`)) as { run?: () => Promise<Figures> };
  if (!mod.run) throw new Error(`bench/${g}.ts exports no run()`);
  return mod.run();
}

async function main(): Promise<void> {
  const asked = process.argv.slice(2).filter((a) => !a.startsWith('-'));
  const groups = asked.length > 0 ? asked : [...GROUPS];
  const unknown = groups.filter((g) => !(GROUPS as readonly string[]).includes(g));
  if (unknown.length > 0) {
    console.error(`bench: unknown group(s) ${unknown.join(', ')} (there are ${GROUPS.join(', ')})`);
    process.exitCode = 2;
    return;
  }
  let failed = 0;
  for (const g of groups as Group[]) {
    let outcome: Figures | Error;
    try {
      outcome = await runGroup(g);
      printTable(`bench ${g}`, outcome);
    } catch (err) {
      failed++;
      outcome = err instanceof Error ? err : new Error(String(err));
      console.error(`bench ${g} failed: ${outcome.stack ?? outcome}`);
      console.error(
        `bench ${g}: no figures (${GROUP_PREFIXES[g].map((p) => `${p}*`).join(', ')}) in bench/results.json: their old values were removed`,
      );
    }
    writeResults(g, outcome);
  }
  if (failed > 0) process.exitCode = 1;
}

void main();
