/**
 * One contender for PidLocks, as its own process (test/unit/common/pid-lock.test.ts): `npx tsx
 * test/support/pid-lock-child.ts <file> <holdMs> <atMs> <rounds> <gapMs>`. In round r it waits until
 * `atMs + r * gapMs` (contenders started apart try at the same moment), tries `<file>-<r>`, and prints `r:held`
 * (holding it `holdMs`, then `r:lost` if it lost it meanwhile) or `r:refused`.
 */
import { PidLock } from '../../common/pid-lock';

async function main(): Promise<void> {
  const [file, holdMs, atMs, rounds, gapMs] = process.argv.slice(2);
  for (let r = 0; r < Number(rounds); r++) {
    await new Promise((ok) => setTimeout(ok, Math.max(0, Number(atMs) + r * Number(gapMs) - Date.now())));
    const lock = new PidLock(`${file}-${r}`, (m) => new Error(m), { staleMs: 1_000, heartbeatMs: 100 });
    try {
      await lock.acquire();
    } catch {
      process.stdout.write(`${r}:refused\n`);
      continue;
    }
    process.stdout.write(`${r}:held\n`);
    await new Promise((ok) => setTimeout(ok, Number(holdMs)));
    if (lock.lost) process.stdout.write(`${r}:lost\n`);
    await lock.release();
  }
}

void main();
