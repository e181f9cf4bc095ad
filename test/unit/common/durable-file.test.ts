/** GroupCommitFile and ensureDir on real files in a temporary folder. */
import { strict as assert } from 'node:assert';
import { constants } from 'node:buffer';
import {
  appendFileSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ensureDir, GroupCommitFile, type GroupCommitOptions } from '../../../common';

describe('GroupCommitFile', () => {
  let dir: string;
  let file: string;
  const opened: GroupCommitFile[] = [];
  /** A GroupCommitFile on the test's file, opened. */
  const make = async (o: Omit<GroupCommitOptions, 'file'> = {}) => {
    const w = new GroupCommitFile({ file, ...o });
    opened.push(w);
    await w.open();
    return w;
  };
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'dmtp-gcf-'));
    file = path.join(dir, 'sub', 'f.log');
  });
  afterEach(async () => {
    for (const w of opened.splice(0)) await w.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  it('writes lines appended together in few groups, in order, each resolved once durable', async () => {
    const w = await make();
    const lines = Array.from({ length: 500 }, (_, i) => `line ${i}\n`);
    await Promise.all(lines.map((l) => w.append(l)));
    assert.equal(readFileSync(file, 'utf8'), lines.join(''));
    assert.equal(w.lines, 500);
    assert.ok(w.groups <= 3, `${w.groups} groups for 500 lines appended at once`);
    await w.settled();
    assert.equal(w.lines, 500, 'settled() writes no line');
  });

  it('reads back the complete lines at open and leaves out a torn last one', async () => {
    const w = await make();
    await w.append('one\n');
    await w.append('two\n');
    await w.close();
    appendFileSync(file, 'thr'); // a crash in the middle of the next write
    const again = new GroupCommitFile({ file });
    opened.push(again);
    const read: string[] = [];
    await again.open((line) => read.push(line));
    assert.deepEqual(read, ['one', 'two']);
    assert.equal(again.lines, 2);
  });

  it("fsyncs each folder it made and the new file's folder: their entries survive a power loss too", async () => {
    // Before, a fresh log or store acknowledged lines after an fdatasync of the file alone: a power loss before
    // the new directory entries reached the disk lost the whole file.
    const synced: string[] = [];
    const realOpen = fsp.open;
    const spy = async (...a: Parameters<typeof fsp.open>) => {
      const fh = await realOpen(...a);
      if (a[1] === 'r' && statSync(a[0] as string).isDirectory()) {
        const sync = fh.sync.bind(fh);
        fh.sync = async () => (synced.push(String(a[0])), sync());
      }
      return fh;
    };
    (fsp as { open: typeof fsp.open }).open = spy as typeof fsp.open;
    try {
      file = path.join(dir, 'x', 'y', 'f.log');
      await (await make()).append('a\n');
    } finally {
      (fsp as { open: typeof fsp.open }).open = realOpen;
    }
    assert.deepEqual(synced, [dir, path.join(dir, 'x'), path.join(dir, 'x', 'y')]);
  });

  it('refuses a tail that is no torn line of this file, and changes nothing (not this kind of file)', async () => {
    // Before, whatever followed the last newline was cut off: a mistyped path emptied someone else's file.
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, '{"port": 8080}');
    const w = new GroupCommitFile({ file, tornLine: (f) => /^[PDF]( |$)/.test(f) });
    await assert.rejects(w.open(), /ends with 14 bytes that are no line of this file .*nothing was changed/);
    assert.equal(readFileSync(file, 'utf8'), '{"port": 8080}');
    writeFileSync(file, 'P a\nD b');
    await make({ tornLine: (f) => /^[PDF]( |$)/.test(f) }); // a torn line of ours: cut off
    assert.equal(readFileSync(file, 'utf8'), 'P a\n');
  });

  it('reads lines split across its read chunks whole, multi-byte characters too', async () => {
    // 1 MiB chunks: lines of 1,000 to 300,000 bytes with a 3-byte character at every position mod 3.
    const lines = Array.from({ length: 40 }, (_, i) => `${i}:` + 'ab€'.repeat(333 + i * 2_500));
    writeFileSync(file.replace('sub/', ''), lines.join('\n') + '\n');
    const w = new GroupCommitFile({ file: file.replace('sub/', '') });
    opened.push(w);
    const read: string[] = [];
    await w.open((line) => read.push(line));
    assert.equal(read.length, lines.length);
    assert.ok(read.every((l, i) => l === lines[i]));
  });

  it('opens a file larger than the longest string V8 can make', async function () {
    this.timeout(120_000);
    // Before, the whole file was read into one string: past ~512 MiB the store could never open again.
    const big = file.replace('sub/', '');
    const line = 'x'.repeat(1_023) + '\n';
    const block = Buffer.from(line.repeat(1_024)); // 1 MiB
    const blocks = Math.ceil(constants.MAX_STRING_LENGTH / block.length) + 1;
    const fd = openSync(big, 'w');
    try {
      for (let i = 0; i < blocks; i++) writeSync(fd, block);
    } finally {
      closeSync(fd);
    }
    const w = new GroupCommitFile({ file: big });
    opened.push(w);
    let n = 0;
    await w.open((l) => {
      if (l.length === 1_023) n++;
    });
    assert.equal(n, blocks * 1_024);
    assert.equal(w.lines, n);
    rmSync(big);
  });

  it('rewrites a snapshot of several chunks whole', async () => {
    const lines = Array.from({ length: 3_000 }, (_, i) => `${i} ${'y'.repeat(1_000)}\n`);
    const w = await make({ snapshot: () => lines });
    await w.append('old\n');
    await w.rewrite();
    assert.equal(readFileSync(file, 'utf8'), lines.join(''));
    assert.equal(w.lines, 3_000);
  });

  it('goes on in another file after switchTo, and tells each append which file it went to', async () => {
    const w = await make({ fileNumber: 4 });
    const next = path.join(dir, 'sub', 'f.log.5');
    assert.equal(await w.append('a\n'), 4);
    const before = w.append('b\n'); // queued before the switch: the old file
    await w.switchTo(next, 5);
    assert.equal(await before, 4);
    assert.equal(await w.append('c\n'), 5);
    assert.equal(readFileSync(file, 'utf8'), 'a\nb\n');
    assert.equal(readFileSync(next, 'utf8'), 'c\n');
    assert.equal(w.lines, 1);
  });

  it('a switch or a rewrite is not starved by appends that never stop', async () => {
    // Before, both waited for the writer to go idle, which a steady stream of appends never lets it do: a busy
    // store never started a new segment.
    const w = await make({ snapshot: () => ['snap\n'] });
    let stop = false;
    let appended = 0;
    const loops = Array.from({ length: 8 }, async () => {
      while (!stop) {
        await w.append('x\n');
        appended++;
      }
    });
    while (appended < 50) await new Promise((r) => setImmediate(r));
    await w.switchTo(path.join(dir, 'sub', 'f.log.1'), 1);
    await w.rewrite();
    stop = true;
    await Promise.all(loops);
    assert.equal(await w.append('y\n'), 1);
    assert.match(readFileSync(path.join(dir, 'sub', 'f.log.1'), 'utf8'), /^snap\n(x\n)*y\n$/);
  });

  it('close() writes what was queued before it and takes nothing after: no append, no switch', async () => {
    const w = await make();
    const queued = w.append('a\n');
    const closed = w.close();
    assert.equal(w.isOpen, false);
    await assert.rejects(w.append('b\n'), /is closed/);
    await assert.rejects(w.switchTo(path.join(dir, 'sub', 'f.log.1'), 1), /is closed/);
    assert.equal(await queued, 0);
    await closed;
    assert.equal(readFileSync(file, 'utf8'), 'a\n');
    assert.equal(existsSync(path.join(dir, 'sub', 'f.log.1')), false, 'no file opened after close');
  });

  it('runs a rewrite after the group in flight; lines appended during it land after it, in the new file', async () => {
    let later: Promise<number> | undefined;
    const w = await make({
      snapshot: () => {
        assert.equal(readFileSync(file, 'utf8'), 'old 1\n', 'the group before it is written first');
        later = w.append('new 1\n'); // appended while the rewrite runs
        return ['compacted\n'];
      },
    });
    const first = w.append('old 1\n');
    await w.rewrite();
    await Promise.all([first, later]);
    assert.equal(readFileSync(file, 'utf8'), 'compacted\nnew 1\n');
    assert.equal(w.lines, 2);
  });

  it('compacts beside the appends: they go on during the copy, and follow the snapshot in the new file', async () => {
    // Before, a compaction held every append until the whole snapshot was written (at a million markers on the
    // coordinator's file log: 0.6 s to build it and 1.2 s to write it, commits waiting all along).
    const snap = Array.from({ length: 300_000 }, (_, i) => `snapshot line ${i} ${'s'.repeat(150)}\n`); // ~50 MB
    let due = true;
    const w = await make({ compactDue: () => due, snapshot: () => snap });
    await w.append('before\n'); // the compaction starts once this group is written and nothing is queued
    due = false;
    const during: string[] = [];
    let beforeDone = 0;
    for (let i = 0; i < 20; i++) {
      const line = `during ${i}\n`;
      await w.append(line);
      during.push(line);
      if (w.rewrites === 0) beforeDone++;
    }
    await w.idle();
    assert.equal(w.rewrites, 1);
    assert.ok(beforeDone > 0, 'appends were answered while the copy was under way');
    assert.equal(readFileSync(file, 'utf8'), snap.join('') + during.join(''));
    assert.equal(w.lines, snap.length + during.length);
    assert.equal(await w.append('after\n'), 0);
    assert.ok(readFileSync(file, 'utf8').endsWith('during 19\nafter\n'));
  });

  it('a compaction overtaken by a switch to another file is dropped, and touches neither file', async () => {
    const snap = Array.from({ length: 100_000 }, (_, i) => `snapshot line ${i} ${'s'.repeat(150)}\n`);
    let due = true;
    const w = await make({ compactDue: () => due, snapshot: () => snap });
    await w.append('old\n'); // a compaction of f.log begins beside the appends
    due = false;
    const next = path.join(dir, 'sub', 'f.log.1');
    await w.switchTo(next, 1); // before the compaction's last step
    assert.equal(await w.append('new\n'), 1);
    await w.idle();
    assert.equal(w.rewrites, 0);
    assert.equal(readFileSync(file, 'utf8'), 'old\n');
    assert.equal(readFileSync(next, 'utf8'), 'new\n');
    assert.deepEqual(readdirSync(path.join(dir, 'sub')).sort(), ['f.log', 'f.log.1']);
  });

  it('compacts between groups when compactDue says so', async () => {
    const w = await make({ compactDue: (lines) => lines >= 3, snapshot: () => ['one\n'] });
    for (let i = 0; i < 3; i++) await w.append(`l${i}\n`);
    await w.idle();
    assert.equal(w.rewrites, 1);
    assert.equal(readFileSync(file, 'utf8'), 'one\n');
  });

  it('a failed write rejects its group and everything after, for good', async () => {
    const errors: string[] = [];
    const w = await make({ onError: (what) => errors.push(what) });
    await w.append('ok\n');
    // The file handle closed under it: the next write fails (EBADF).
    await (w as unknown as { fd: FileHandle }).fd.close();
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
