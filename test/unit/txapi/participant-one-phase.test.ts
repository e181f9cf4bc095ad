/**
 * A one-phase Commit for a branch the participant does not know: never enlisted (its work was lost) versus
 * possibly purged (older than retentionMs). A file branch store in a temporary folder; no network.
 */
import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { mintXid, toStatus } from '../../../common';
import { BranchOutcomeForgottenError, defineResource, FileBranchStore, Participant } from '../../../txapi';

describe('Participant: one-phase Commit of an unknown branch', () => {
  let dir: string;
  let p: Participant;
  const retentionMs = 60 * 60_000;

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dmtp-one-phase-'));
    const noop = defineResource<undefined>({
      name: 'db',
      volatileWork: true,
      prepare: async () => ({ vote: 'prepared' }),
      commit: async () => ({ committed: true }),
      rollback: async () => undefined,
    });
    p = new Participant({
      service: 'one-phase',
      instanceId: 'i1',
      address: '127.0.0.1:1',
      store: new FileBranchStore({ path: path.join(dir, 'branches.jsonl') }),
      resources: [noop],
      retentionMs,
    });
    await p.start();
  });
  afterEach(async () => {
    await p.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('of a recent transaction: its work never reached this instance, so not committed (recorded)', async () => {
    const key = { xid: mintXid('c1'), branchId: p.branchIdFor('db') };
    const r = await p.commit(key, 'db', true);
    assert.equal(r.committed, false);
    assert.match(r.reason ?? '', /unknown branch/);
    assert.equal((await p.store.get(key))?.status, 'rolled_back');
  });

  it('of a transaction older than retentionMs: it may have committed and been purged, so no answer is guessed', async () => {
    const key = { xid: mintXid('c1', Date.now() - retentionMs - 5 * 60_000), branchId: p.branchIdFor('db') };
    await assert.rejects(p.commit(key, 'db', true), (err: unknown) => {
      assert.ok(err instanceof BranchOutcomeForgottenError);
      assert.equal(toStatus(err).code, 15, 'DATA_LOSS: the coordinator asks on, an operator decides');
      assert.match((err as Error).message, /may have committed and been purged/);
      return true;
    });
    assert.equal(await p.store.get(key), undefined, 'nothing recorded: it is not known');
  });
});
