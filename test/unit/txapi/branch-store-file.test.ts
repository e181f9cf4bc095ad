import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FailedPreconditionError, lockTextFor, ManualClock, mintXid } from '../../../common';
import {
  applyTransition,
  FileBranchStore,
  type BranchStatus,
  type FileBranchStoreOptions,
} from '../../../txapi';
import { branchStoreContract } from '../../support/branch-store-contract';
import { nameFor } from '../../support/env';

/** The store's files in `dir`, without `<path>.lock` (held while the store is open). */
async function segmentFiles(dir: string): Promise<string[]> {
  return (await fs.readdir(dir)).filter((f) => !f.endsWith('.lock'));
}

/**
 * Waits for a new segment the store started in the background: the line that fills a segment starts the next
 * without waiting for its file to be made, so a listing of the folder right after it may not hold that file yet.
 */
async function rolled(store: FileBranchStore): Promise<void> {
  await (store as unknown as { rolling?: Promise<void> }).rolling;
}

async function tmpDir(ctx: Mocha.Context): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), `${nameFor(ctx, 30)}-`));
}

describe('txapi FileBranchStore', () => {
  describe('contract', () => {
    branchStoreContract(async (ctx) => {
      const dir = await tmpDir(ctx);
      const file = path.join(dir, 'branches.jsonl');
      let store = new FileBranchStore({ path: file });
      await store.open();
      return {
        store,
        reopen: async () => {
          await store.close();
          store = new FileBranchStore({ path: file });
          await store.open();
          return store;
        },
        cleanup: async () => {
          await store.close();
          await fs.rm(dir, { recursive: true, force: true });
        },
      };
    });
  });

  it('starts a new segment every segmentLines lines and reads them all back in order', async function () {
    const dir = await tmpDir(this);
    const file = path.join(dir, 'b.jsonl');
    const store = new FileBranchStore({ path: file, segmentLines: 10 });
    try {
      await store.open();
      const keys = Array.from({ length: 15 }, (_, i) => ({ xid: mintXid('c'), branchId: `db@i${i}` }));
      for (const k of keys) {
        await store.transition(k, 'registered', { resource: 'db' });
        await store.transition(k, 'prepared');
      }
      for (const k of keys.slice(0, 10)) await store.transition(k, 'committed');
      assert.equal(store.lineCount, 40);
      assert.equal(store.segmentCount, 5);
      await rolled(store);
      assert.deepEqual((await segmentFiles(dir)).sort(), [
        'b.jsonl',
        'b.jsonl.1',
        'b.jsonl.2',
        'b.jsonl.3',
        'b.jsonl.4',
      ]);
      await store.close();
      const again = new FileBranchStore({ path: file, segmentLines: 10 });
      await again.open();
      assert.equal((await again.list(['committed'])).length, 10);
      assert.equal((await again.list(['prepared'])).length, 5);
      assert.equal(again.lineCount, 40);
      await again.close();
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('deletes the oldest segments once none of their lines is needed, never a later one first', async function () {
    const dir = await tmpDir(this);
    const file = path.join(dir, 'b.jsonl');
    const line = (branchId: string, status: BranchStatus, atMs: number) =>
      JSON.stringify({ ...applyTransition({ xid, branchId }, undefined, status, { resource: 'db' }, atMs) }) +
      '\n';
    const xid = mintXid('c');
    // As a store leaves them after the wall clock stepped back: segment 0 holds a's 'prepared' line and an open
    // branch b changed later (t=5000) than a's commit and e's null rollback in segment 1 (t=2000).
    await fs.writeFile(file, line('db@a', 'prepared', 1_000) + line('db@b', 'registered', 5_000));
    await fs.writeFile(`${file}.1`, line('db@a', 'committed', 2_000) + line('db@e', 'rolled_back', 2_000));
    await fs.writeFile(`${file}.2`, '');
    const open = async () => {
      const s = new FileBranchStore({ path: file, segmentLines: 2 });
      await s.open();
      return s;
    };
    try {
      const store = await open();
      assert.equal(await store.purge(3_000), 2);
      // Segment 1 holds nothing live now, but segment 0 (held by b) stays, so segment 1 must stay too: without
      // it, a's 'prepared' line in segment 0 would be its latest again.
      assert.equal(store.segmentCount, 3);
      await store.close();
      const again = await open();
      assert.notEqual((await again.get({ xid, branchId: 'db@a' }))?.status, 'prepared');
      assert.deepEqual(
        (await again.list(['registered', 'prepared'])).map((r) => r.branchId),
        ['db@b'],
      );
      await again.transition({ xid, branchId: 'db@b' }, 'rolled_back', { reason: 'done' });
      await again.purge(Date.now() + 1);
      assert.deepEqual(
        await segmentFiles(dir),
        ['b.jsonl.2'],
        'every segment before the one appended to went',
      );
      await again.close();
      const last = await open();
      assert.deepEqual(await last.list(['registered', 'prepared']), []);
      await last.close();
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('a branch enlisted again after its final record was purged is open, and purging leaves it', async function () {
    const dir = await tmpDir(this);
    const file = path.join(dir, 'b.jsonl');
    const xid = mintXid('c');
    const line = (status: BranchStatus, atMs: number) =>
      JSON.stringify(
        applyTransition({ xid, branchId: 'db@k' }, undefined, status, { resource: 'db' }, atMs),
      ) + '\n';
    // Its committed line is still in an older segment; the late enlist after the purge came later.
    await fs.writeFile(file, line('committed', 1_000));
    await fs.writeFile(`${file}.1`, line('registered', 2_000));
    const store = new FileBranchStore({ path: file });
    try {
      await store.open();
      assert.equal(await store.purge(3_000), 0);
      assert.deepEqual(
        (await store.list(['registered'])).map((r) => r.status),
        ['registered'],
      );
      await store.transition({ xid, branchId: 'db@k' }, 'rolled_back', { reason: 'late' });
      assert.deepEqual(await store.list(['registered']), []);
      assert.equal(await store.purge(Date.now() + 1), 1);
      assert.equal(await store.get({ xid, branchId: 'db@k' }), undefined);
    } finally {
      await store.close();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('writes a branch unfinished past the rest of the oldest segment again, so the segment can go', async function () {
    const dir = await tmpDir(this);
    const file = path.join(dir, 'b.jsonl');
    const clock = new ManualClock(1_000_000);
    const store = new FileBranchStore({ path: file, segmentLines: 2, clock });
    try {
      await store.open();
      const inDoubt = { xid: mintXid('c'), branchId: 'db@p' };
      await store.transition(inDoubt, 'registered', { resource: 'db' });
      await store.transition(inDoubt, 'prepared'); // segment 0 full
      for (let i = 0; i < 3; i++) {
        await store.transition({ xid: mintXid('c'), branchId: `db@x${i}` }, 'rolled_back', {
          resource: 'db',
        });
      }
      assert.equal(store.segmentCount, 3);
      clock.advance(60_000);
      await store.purge(clock.now());
      await rolled(store);
      // Written again at the end (segment 2, which filled, so appending went on in 3), the older ones gone.
      // Written now, the line holds segment 2 for another retention: it is not written again at once.
      assert.deepEqual((await segmentFiles(dir)).sort(), ['b.jsonl.2', 'b.jsonl.3']);
      await store.close();
      const again = new FileBranchStore({ path: file, segmentLines: 2, clock });
      await again.open();
      assert.equal((await again.get(inDoubt))?.status, 'prepared');
      assert.equal((await again.get(inDoubt))?.resource, 'db');
      await again.close();
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('a lazy transition answers at once, and the next durable one writes the whole record', async function () {
    const dir = await tmpDir(this);
    const file = path.join(dir, 'b.jsonl');
    const store = new FileBranchStore({ path: file });
    await store.open();
    const key = { xid: mintXid('c1'), branchId: 'r@i1' };
    const r = await store.transition(key, 'registered', { resource: 'r' }, { lazy: true });
    assert.equal(r.record.status, 'registered');
    assert.equal((await store.get(key))?.status, 'registered');
    await store.transition(key, 'prepared');
    const lines = (await fs.readFile(file, 'utf8')).trim().split('\n');
    assert.deepEqual(
      lines.map((l) => [JSON.parse(l).status, JSON.parse(l).resource]),
      [['prepared', 'r']],
    );
    await store.close();
    const again = new FileBranchStore({ path: file });
    await again.open();
    assert.equal((await again.get(key))?.resource, 'r');
    await again.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('after a failed write, get() and list() are refused too: never a state the disk does not hold', async function () {
    // Before, memory took the change before the write: after a failed `prepared` line get() answered 'prepared',
    // and a repeated one-phase Commit ran COMMIT PREPARED on a vote a restart then forgot.
    const dir = await tmpDir(this);
    const file = path.join(dir, 'b.jsonl');
    const store = new FileBranchStore({ path: file });
    await store.open();
    const key = { xid: mintXid('c1'), branchId: 'r@i1' };
    await store.transition(key, 'registered', { resource: 'r' });
    // The file handle closed under it (as EIO/ENOSPC would fail it): the next write fails.
    const writer = (store as unknown as { writer: { fd: { close(): Promise<void> } } }).writer;
    await writer.fd.close();
    await assert.rejects(store.transition(key, 'prepared'));
    await assert.rejects(store.get(key), /branch store .* failed a write/);
    await assert.rejects(store.list(['prepared', 'registered']), /branch store .* failed a write/);
    await store.close().catch(() => undefined);
    const again = new FileBranchStore({ path: file });
    await again.open();
    assert.equal((await again.get(key))?.status, 'registered', 'what the disk holds');
    await again.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('ignores a torn last line left by a crash mid-write', async function () {
    const dir = await tmpDir(this);
    const file = path.join(dir, 'b.jsonl');
    try {
      const store = new FileBranchStore({ path: file });
      await store.open();
      const k = { xid: mintXid('c'), branchId: 'db@i1' };
      await store.transition(k, 'registered', { resource: 'db' });
      await store.close();
      await fs.appendFile(file, '{"xid":"half');
      const again = new FileBranchStore({ path: file });
      await again.open();
      assert.equal((await again.get(k))?.status, 'registered');
      await again.close();
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses a file that is not a branch store: lines that are no records, a tail that is no torn record', async function () {
    // Before, a JSON line of another shape was taken for a record without a status (or crashed the open with a
    // bare TypeError), and a file without a last newline (a mistyped path) was emptied as a torn line.
    const dir = await tmpDir(this);
    const file = path.join(dir, 'b.jsonl');
    try {
      for (const [content, error] of [
        ['null\n', /line 1 is no branch record/],
        ['{"port": 8080}\n', /line 1 is no branch record/],
        ['port = 8080', /ends with 11 bytes that are no line of this file/],
      ] as const) {
        await fs.writeFile(file, content);
        const store = new FileBranchStore({ path: file });
        await assert.rejects(store.open(), error);
        assert.equal(await fs.readFile(file, 'utf8'), content, 'nothing changed');
      }
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('writes each branch held in an old segment again once, not round after round', async function () {
    // Before, a line written again kept its old time, so the segment it filled looked old at once: a purge with
    // at least segmentLines branches in doubt rewrote them segment after segment and never returned.
    const dir = await tmpDir(this);
    const clock = new ManualClock(1_000_000);
    const store = new FileBranchStore({ path: path.join(dir, 'b.jsonl'), segmentLines: 10, clock });
    try {
      await store.open();
      for (let i = 0; i < 40; i++) {
        const k = { xid: mintXid('c'), branchId: `db@p${i}` };
        await store.transition(k, 'registered', { resource: 'db' }, { lazy: true });
        await store.transition(k, 'prepared');
      }
      await store.transition({ xid: mintXid('c'), branchId: 'db@last' }, 'rolled_back', { resource: 'db' });
      clock.advance(60_000);
      await rolled(store);
      const before = (await segmentFiles(dir)).sort();
      await store.purge(clock.now() - 1_000);
      await rolled(store);
      const after = (await segmentFiles(dir)).sort();
      // The segments that held them are gone; what is left holds each branch in doubt once, and 'last'.
      assert.ok(!after.includes(before[0]), `${before.join()} → ${after.join()}`);
      assert.equal(store.lineCount, 41);
      await store.purge(clock.now() - 1_000);
      await rolled(store);
      assert.deepEqual((await segmentFiles(dir)).sort(), after, 'not written again before another retention');
      assert.equal(store.lineCount, 41);
      assert.equal((await store.list(['prepared'])).length, 40);
    } finally {
      await store.close();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('close() during a roll closes for good: everything before it kept, nothing after it written', async function () {
    // Before, a roll asked for as close() ran reopened the file after it was closed, and a transition after
    // close() was accepted and written.
    const dir = await tmpDir(this);
    const file = path.join(dir, 'b.jsonl');
    const store = new FileBranchStore({ path: file, segmentLines: 1 });
    await store.open();
    try {
      const keys = Array.from({ length: 20 }, (_, i) => ({ xid: mintXid('c'), branchId: `db@k${i}` }));
      const all = keys.map((k) => store.transition(k, 'rolled_back', { resource: 'db' }));
      await all[0]; // one group: its writes filled the segment, and a roll to segment 1 is under way now
      await Promise.all([store.close(), ...all]);
      await assert.rejects(
        store.transition({ xid: mintXid('c'), branchId: 'db@late' }, 'rolled_back', { resource: 'db' }),
        /not open/,
      );
      const again = new FileBranchStore({ path: file });
      await again.open();
      assert.equal((await again.list(['rolled_back'])).length, 20);
      assert.equal(again.lineCount, 20);
      await again.close();
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('a branch ended while the clock was ahead does not hold up purging once it stepped back', async function () {
    const dir = await tmpDir(this);
    let t = 1_000_000 + 86_400_000; // a day ahead
    const clock = { now: () => t, setTimeout: () => ({ cancel: () => undefined }) };
    const store = new FileBranchStore({ path: path.join(dir, 'b.jsonl'), clock });
    try {
      await store.open();
      const early = { xid: mintXid('c'), branchId: 'db@ahead' };
      await store.transition(early, 'rolled_back', { resource: 'db' });
      t = 1_000_000; // stepped back
      for (let i = 0; i < 50; i++) {
        await store.transition({ xid: mintXid('c'), branchId: `db@x${i}` }, 'rolled_back', {
          resource: 'db',
        });
      }
      t += 3_600_000;
      assert.equal(await store.purge(t - 60_000), 50);
      assert.equal((await store.get(early))?.status, 'rolled_back', 'its own time has not come');
      t += 86_400_000;
      assert.equal(await store.purge(t - 60_000), 1);
    } finally {
      await store.close();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('purges thousands of final branches over several rounds, every one', async function () {
    const dir = await tmpDir(this);
    const clock = new ManualClock(1_000_000);
    const store = new FileBranchStore({ path: path.join(dir, 'b.jsonl'), clock });
    try {
      await store.open();
      const keys = Array.from({ length: 3_000 }, (_, i) => ({ xid: mintXid('c'), branchId: `db@x${i}` }));
      for (const [i, k] of keys.entries()) {
        if (i % 1_000 === 0) clock.advance(1_000);
        await store.transition(k, 'rolled_back', { resource: 'db' });
      }
      let purged = 0;
      for (let round = 0; round < 3; round++) {
        purged += await store.purge(1_000_000 + (round + 2) * 1_000);
        assert.equal(purged, (round + 1) * 1_000, `round ${round}`);
      }
      for (const k of keys) assert.equal(await store.get(k), undefined);
    } finally {
      await store.close();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses to open beside a file that only looks like one of its segments (a dated copy)', async function () {
    const dir = await tmpDir(this);
    const file = path.join(dir, 'b.jsonl');
    try {
      const store = new FileBranchStore({ path: file, segmentLines: 2 });
      await store.open();
      for (let i = 0; i < 5; i++) {
        await store.transition({ xid: mintXid('c'), branchId: `db@x${i}` }, 'rolled_back', {
          resource: 'db',
        });
      }
      await store.close();
      await fs.copyFile(file, `${file}.20261127`);
      const again = new FileBranchStore({ path: file, segmentLines: 2 });
      await assert.rejects(again.open(), /b\.jsonl\.20261127 does not follow the segments before it/);
      await fs.rm(`${file}.20261127`);
      const fine = new FileBranchStore({ path: file, segmentLines: 2 });
      await fine.open();
      assert.equal((await fine.list(['rolled_back'])).length, 5);
      await fine.close();
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses the old compactAfterLines option instead of ignoring it, and a segmentLines that is no count', () => {
    for (const segmentLines of [0, -1, 1.5, NaN]) {
      assert.throws(() => new FileBranchStore({ path: '/tmp/x', segmentLines }), /segmentLines must be/);
    }
    assert.throws(
      () => new FileBranchStore({ path: '/tmp/x', compactAfterLines: 5 } as FileBranchStoreOptions),
      /compactAfterLines is gone/,
    );
  });

  it('one process per store: a second open is refused while the first holds it, and a dead holder is taken over', async function () {
    // Before, two participants (twins started with the same instance id) could append to one store, each
    // trusting only its own lines.
    const dir = await tmpDir(this);
    const file = path.join(dir, 'b.jsonl');
    const first = new FileBranchStore({ path: file });
    await first.open();
    try {
      await assert.rejects(new FileBranchStore({ path: file }).open(), (e: Error) => {
        assert.ok(e instanceof FailedPreconditionError, String(e));
        assert.match(e.message, /already open in this process/);
        return true;
      });
    } finally {
      await first.close();
    }
    // A lock left by a process that is gone (a kill -9) is taken over; one of a live process is refused.
    await fs.writeFile(`${file}.lock`, lockTextFor(2147483646));
    const again = new FileBranchStore({ path: file });
    await again.open();
    await again.close();
    await fs.writeFile(`${file}.lock`, lockTextFor(process.ppid));
    await assert.rejects(
      new FileBranchStore({ path: file }).open(),
      new RegExp(`in use by process ${process.ppid}`),
    );
    await fs.rm(dir, { recursive: true, force: true });
  });
});
