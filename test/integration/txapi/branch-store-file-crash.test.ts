/**
 * FileBranchStore under kill -9: a child process churns branches (test/support/branch-store-file-child.ts) with
 * segments of 50 lines, a 200 ms retention and some branches in doubt for good, so segments roll, are written
 * again and deleted all the time. It is killed at a random moment, five times over the same files; after each
 * kill the store is opened here and every change the child acknowledged (or that an earlier check found
 * there) is checked: such a branch is never missing (unless it was final before a purge the child announced
 * had started: then it may have been purged) and never back in an earlier state (a purged or finished branch must
 * not come back from an older line).
 */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FileBranchStore, FINAL, type BranchStatus } from '../../../txapi';

const STEP: Record<BranchStatus, number> = { registered: 0, prepared: 1, committed: 2, rolled_back: 2 };
const ROUNDS = 5;

describe('txapi FileBranchStore under kill -9', function () {
  this.timeout(120_000);
  let child: ChildProcess | undefined;
  let dir: string;

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dmtp-bsf-crash-'));
  });
  afterEach(async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await new Promise((r) => child!.once('exit', r));
    }
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('never loses an acknowledged change nor brings an older one back, across rolls, purges and deletions', async () => {
    const file = path.join(dir, 'branches.jsonl');
    const acked = new Map<
      string,
      { xid: string; branchId: string; status: BranchStatus; updatedAtMs: number }
    >();
    /** The latest `beforeMs` of a purge any run started: only a final branch changed before it may be gone. */
    let purgedBefore = -Infinity;
    let inDoubt = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const root = path.join(__dirname, '..', '..', '..');
      const proc = spawn(
        process.execPath,
        ['--import', 'tsx', path.join(root, 'test', 'support', 'branch-store-file-child.ts')],
        {
          cwd: root,
          stdio: ['ignore', 'pipe', 'inherit'],
          env: {
            ...process.env,
            BSF_FILE: file,
            BSF_SEGMENT_LINES: '50',
            BSF_RETENTION_MS: '200',
            BSF_TAG: `r${round}`,
          },
        },
      );
      child = proc;
      // 'close', not 'exit': every line the child wrote before it died has been read by then.
      const exited = new Promise<number | string>((resolve) =>
        proc.once('close', (code, signal) => resolve(code ?? signal ?? -1)),
      );
      let rest = '';
      let ready = false;
      let acksThisRound = 0;
      proc.stdout!.on('data', (d: Buffer) => {
        const lines = (rest + d.toString('utf8')).split('\n');
        rest = lines.pop()!;
        for (const line of lines) {
          if (line === 'ready') ready = true;
          const p = /^P (\d+)$/.exec(line);
          if (p) purgedBefore = Math.max(purgedBefore, Number(p[1]));
          const m = /^A (\S+) (\S+) (\S+) (\d+)$/.exec(line);
          if (!m) continue;
          const a = { xid: m[1], branchId: m[2], status: m[3] as BranchStatus, updatedAtMs: Number(m[4]) };
          const known = acked.get(`${a.xid}|${a.branchId}`);
          // Never back to an earlier step (a check may have seen a later state already).
          if (!known || STEP[a.status] >= STEP[known.status]) acked.set(`${a.xid}|${a.branchId}`, a);
          acksThisRound++;
        }
      });
      const startedAt = Date.now();
      while (!ready && proc.exitCode === null && Date.now() - startedAt < 30_000) await sleep(20);
      assert.ok(ready, `round ${round}: the child never got ready (exit ${proc.exitCode})`);
      // Long enough for purges (every 100 ms) and segment deletions, then at a random moment.
      await sleep(600 + Math.floor(Math.random() * 900));
      assert.equal(proc.exitCode, null, `round ${round}: the child died on its own`);
      proc.kill('SIGKILL');
      assert.equal(await exited, 'SIGKILL');
      child = undefined;
      assert.ok(acksThisRound > 100, `round ${round}: only ${acksThisRound} changes acknowledged`);

      const store = new FileBranchStore({ path: file, segmentLines: 50 });
      await store.open();
      try {
        inDoubt = 0;
        for (const a of acked.values()) {
          const rec = await store.get(a);
          const what = `${a.branchId} of ${a.xid}, acknowledged ${a.status}, after kill ${round + 1}`;
          if (FINAL.includes(a.status)) {
            if (rec === undefined) {
              assert.ok(
                a.updatedAtMs < purgedBefore,
                `${what}: missing, though no purge could have taken it`,
              );
              continue;
            }
            assert.equal(rec.status, a.status, `${what}: found ${rec.status}`);
          } else {
            assert.ok(rec, `${what}: missing`);
            assert.ok(STEP[rec.status] >= STEP[a.status], `${what}: found ${rec.status}`);
            if (rec.status === 'prepared') inDoubt++;
            // Durable, even if the kill came before its acknowledgement was printed: from now on it is what
            // the store must keep (a final one may then be purged by a later run).
            a.status = rec.status;
            a.updatedAtMs = rec.updatedAtMs;
          }
        }
      } finally {
        await store.close();
      }
    }
    assert.ok(
      inDoubt > 0,
      'some branches stayed in doubt across the kills (their segments were written again)',
    );
    const files = await fs.readdir(dir);
    assert.ok(!files.includes('branches.jsonl'), `the first segment was never deleted: ${files.join(', ')}`);
    // Segments roll every 50 lines and old ones go: far fewer files are left than were made.
    const made = Math.max(...files.map((f) => Number(f.slice('branches.jsonl.'.length)))) + 1;
    assert.ok(files.length * 4 < made, `old segments pile up: ${files.length} files of ${made} made`);
  });
});
