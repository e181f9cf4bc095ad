/**
 * PidLock on real files: who may take a lock in place, and what a holder does when it loses its lock. Contenders
 * at once are separate processes (test/support/pid-lock-child.ts), stopped by their own handles.
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { promises as fs, mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { lockTextFor, PidLock } from '../../../common';

const CHILD = path.join(__dirname, '..', '..', 'support', 'pid-lock-child.ts');

describe('PidLock', function () {
  this.timeout(20_000);
  let dir: string;
  let file: string;
  const locks: PidLock[] = [];
  const lock = (o: ConstructorParameters<typeof PidLock>[2] = {}) => {
    const l = new PidLock(file, (m) => new Error(m), { staleMs: 1_000, heartbeatMs: 100, ...o });
    locks.push(l);
    return l;
  };
  /** A lock of another pid namespace (a twin container sharing the volume): its pid means nothing here. */
  const foreign = (pid = 1) =>
    JSON.stringify({ ...JSON.parse(lockTextFor(pid)), pidns: 'pid:[1]', host: 'twin' });

  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'dmtp-pidlock-'));
    file = path.join(dir, 'store');
  });
  afterEach(async () => {
    for (const l of locks.splice(0)) await l.release();
    rmSync(dir, { recursive: true, force: true });
  });

  it('takes over at once a lock of a dead process of this pid namespace, and refuses a live one at once', async () => {
    await fs.writeFile(`${file}.lock`, lockTextFor(2_147_483_646));
    await lock().acquire();
    await locks[0].release();
    await fs.writeFile(`${file}.lock`, lockTextFor(process.ppid));
    await assert.rejects(
      lock().acquire(),
      new RegExp(`in use by process ${process.ppid} on ${os.hostname()}`),
    );
  });

  it("judges an earlier version's bare-pid lock by its pid, as that version did: a live one is refused", async () => {
    // A bare pid is never touched: taken by its age, a live older process's store would get a second writer.
    await fs.writeFile(`${file}.lock`, String(process.ppid));
    await assert.rejects(lock().acquire(), new RegExp(`in use by process ${process.ppid}`));
    await fs.writeFile(`${file}.lock`, '2147483646');
    await lock().acquire();
  });

  it("does not trust another pid namespace's pid: refuses a lock still being touched, takes one left alone", async () => {
    // Before, the lock held a bare pid: a twin container's holder (pid 1 there) read as "gone" here and was taken
    // over while it ran, and both wrote the store.
    await fs.writeFile(`${file}.lock`, foreign());
    const touch = setInterval(() => void fs.utimes(`${file}.lock`, new Date(), new Date()), 100);
    try {
      await assert.rejects(lock().acquire(), /in use by process 1 on twin/);
    } finally {
      clearInterval(touch);
    }
    await lock().acquire(); // untouched for staleMs: its holder is gone
    assert.equal(JSON.parse(await fs.readFile(`${file}.lock`, 'utf8')).pid, process.pid);
  });

  it('a holder whose lock was taken over finds out within a heartbeat and calls onLost', async () => {
    let lost: Error | undefined;
    const l = lock({ onLost: (err) => (lost = err) });
    await l.acquire();
    await fs.writeFile(`${file}.lock`, foreign());
    for (let i = 0; i < 100 && !lost; i++) await new Promise((r) => setTimeout(r, 50));
    assert.match(String(lost), /is now held by .* in use by process 1 on twin/);
    assert.equal(l.lost, lost);
    await l.release();
    assert.equal(
      JSON.parse(await fs.readFile(`${file}.lock`, 'utf8')).host,
      'twin',
      "release leaves another's lock",
    );
  });

  it('contenders over a stale lock at once: exactly one holds it, and keeps it', async function () {
    // Before, taking over was read pid, remove, create: two or three contenders all removed and created in turn;
    // and a contender that moved a fresh lock aside could delete it. 4 contenders, 4 rounds at the same moments.
    this.timeout(40_000);
    const ROUNDS = 4;
    for (let r = 0; r < ROUNDS; r++) await fs.writeFile(`${file}-${r}.lock`, lockTextFor(2_147_483_646));
    const at = String(Date.now() + 6_000); // after every child has started
    const children = Array.from({ length: 4 }, () =>
      spawn(process.execPath, ['--import', 'tsx', CHILD, file, '600', at, String(ROUNDS), '1000'], {
        stdio: ['ignore', 'pipe', 'inherit'],
      }),
    );
    const said = (
      await Promise.all(
        children.map(
          (c) =>
            new Promise<string>((resolve) => {
              let out = '';
              c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
              c.once('exit', () => resolve(out));
            }),
        ),
      )
    )
      .join('')
      .split('\n')
      .filter(Boolean);
    for (let r = 0; r < ROUNDS; r++) {
      const mine = said.filter((l) => l.startsWith(`${r}:`)).sort();
      assert.deepEqual(mine, [`${r}:held`, `${r}:refused`, `${r}:refused`, `${r}:refused`], `round ${r}`);
    }
  });
});
