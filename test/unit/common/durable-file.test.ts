/** GroupCommitFile and ensureDir on real files in a temporary folder. */
import { strict as assert } from 'node:assert';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ensureDir, GroupCommitFile, replaceFileDurably } from '../../../common';

describe('GroupCommitFile', () => {
  let dir: string;
  let file: string;
  let fd: number;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'dmtp-gcf-'));
    file = path.join(dir, 'f.log');
    fd = openSync(file, 'a');
  });
  afterEach(() => {
    try {
      closeSync(fd);
    } catch {
      // closed by the test
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('writes lines appended together in few groups, in order, each resolved once durable', async () => {
    const w = new GroupCommitFile({ fd: () => fd });
    const lines = Array.from({ length: 500 }, (_, i) => `line ${i}\n`);
    await Promise.all(lines.map((l) => w.append(l)));
    assert.equal(readFileSync(file, 'utf8'), lines.join(''));
    assert.equal(w.lines, 500);
    assert.ok(w.groups <= 3, `${w.groups} groups for 500 lines appended at once`);
    await w.settled();
    assert.equal(w.lines, 500, 'settled() writes no line');
  });

  it('runs a rewrite after the group in flight; lines appended during it land after it, in the new file', async () => {
    const w = new GroupCommitFile({ fd: () => fd });
    const first = w.append('old 1\n');
    let later: Promise<void> | undefined;
    await w.exclusive(async () => {
      assert.equal(readFileSync(file, 'utf8'), 'old 1\n', 'the group before it is written first');
      later = w.append('new 1\n'); // appended while the rewrite runs
      await replaceFileDurably(file, 'compacted\n');
      closeSync(fd);
      fd = openSync(file, 'a');
      return 1;
    });
    await Promise.all([first, later]);
    assert.equal(readFileSync(file, 'utf8'), 'compacted\nnew 1\n');
    assert.equal(w.lines, 2);
  });

  it('compacts between groups when compactDue says so', async () => {
    let compactions = 0;
    const w = new GroupCommitFile({
      fd: () => fd,
      compactDue: (lines) => lines >= 3,
      compact: async () => {
        compactions++;
        await replaceFileDurably(file, 'one\n');
        closeSync(fd);
        fd = openSync(file, 'a');
        return 1;
      },
    });
    for (let i = 0; i < 3; i++) await w.append(`l${i}\n`);
    await w.idle();
    assert.equal(compactions, 1);
    assert.equal(readFileSync(file, 'utf8'), 'one\n');
  });

  it('a failed write rejects its group and everything after, for good', async () => {
    const errors: string[] = [];
    const w = new GroupCommitFile({ fd: () => fd, onError: (what) => errors.push(what) });
    await w.append('ok\n');
    closeSync(fd); // the next write fails (EBADF)
    const results = await Promise.allSettled([w.append('a\n'), w.append('b\n')]);
    assert.deepEqual(
      results.map((r) => r.status),
      ['rejected', 'rejected'],
    );
    assert.ok(w.broken);
    await assert.rejects(w.append('c\n'));
    assert.deepEqual(errors, ['write']);
  });
});

describe('ensureDir', () => {
  it('makes missing parents, and fails at once where a level cannot be made', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'dmtp-ensure-'));
    try {
      await ensureDir(path.join(dir, 'a', 'b', 'c'));
      await ensureDir(path.join(dir, 'a', 'b', 'c'));
      writeFileSync(path.join(dir, 'file'), '');
      await assert.rejects(ensureDir(path.join(dir, 'file', 'x')), /ENOTDIR|EEXIST/);
      await assert.rejects(ensureDir('/proc/dmtp-nope/x'), /ENOENT/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
