/**
 * One contender for a PidLock, as its own process (test/unit/common/pid-lock.test.ts): `npx tsx
 * test/support/pid-lock-child.ts <file> <holdMs> <atMs>` waits until `atMs` (epoch ms: contenders started apart
 * try at the same moment), then prints `held` and holds the lock `holdMs`, or prints `refused`.
 */
import { PidLock } from '../../common/pid-lock';

async function main(): Promise<void> {
  const [file, holdMs, atMs] = process.argv.slice(2);
  await new Promise((r) => setTimeout(r, Math.max(0, Number(atMs) - Date.now())));
  const lock = new PidLock(file, (m) => new Error(m), { staleMs: 1_000, heartbeatMs: 200 });
  try {
    await lock.acquire();
  } catch {
    process.stdout.write('refused\n');
    return;
  }
  process.stdout.write('held\n');
  await new Promise((r) => setTimeout(r, Number(holdMs)));
  await lock.release();
}

void main();
