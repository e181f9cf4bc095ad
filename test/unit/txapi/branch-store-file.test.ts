import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { mintXid } from '../../../common';
import { FileBranchStore } from '../../../txapi';
import { branchStoreContract } from '../../support/branch-store-contract';
import { nameFor } from '../../support/env';

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

  it('compacts the file and keeps every branch', async function () {
    const dir = await tmpDir(this);
    const file = path.join(dir, 'b.jsonl');
    const store = new FileBranchStore({ path: file, compactAfterLines: 20 });
    try {
      await store.open();
      const keys = Array.from({ length: 15 }, (_, i) => ({ xid: mintXid('c'), branchId: `db@i${i}` }));
      for (const k of keys) {
        await store.transition(k, 'registered', { resource: 'db' });
        await store.transition(k, 'prepared');
        await store.transition(k, 'committed');
      }
      assert.ok(store.lineCount < 45, `compacted: ${store.lineCount} lines for 45 changes`);
      await store.close();
      const again = new FileBranchStore({ path: file });
      await again.open();
      assert.equal((await again.list(['committed'])).length, 15);
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
});
