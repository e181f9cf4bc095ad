/**
 * The one contract every BranchStore passes (txapi/branch-store.ts): run by the file store's unit test and the
 * PostgreSQL store's integration test. `setup` gives a fresh store and a way to reopen it (a restart).
 */
import { strict as assert } from 'node:assert';
import { mintXid } from '../../common';
import { BranchNotFoundError, IllegalBranchTransitionError, type BranchStore } from '../../txapi';

export interface ContractHarness {
  /** An opened, empty store. */
  store: BranchStore;
  /** Closes `store` and opens a new instance on the same durable state (a restart). */
  reopen(): Promise<BranchStore>;
  /** Closes whatever is open and removes the durable state. */
  cleanup(): Promise<void>;
}

export function branchStoreContract(setup: (ctx: Mocha.Context) => Promise<ContractHarness>): void {
  let h: ContractHarness;
  let store: BranchStore;
  const key = (n = 1) => ({ xid: mintXid('contract-coord'), branchId: `db${n}@inst-1` });
  const enlist = { resource: 'db', coordinatorAddress: '127.0.0.1:1', deadlineAtMs: Date.now() + 60_000 };

  beforeEach(async function () {
    h = await setup(this);
    store = h.store;
  });
  afterEach(async () => {
    await h.cleanup();
  });

  it('enlists a branch as registered with what the call said', async () => {
    const k = key();
    const r = await store.transition(k, 'registered', enlist);
    assert.equal(r.changed, true);
    const got = await store.get(k);
    assert.equal(got?.status, 'registered');
    assert.equal(got?.resource, 'db');
    assert.equal(got?.coordinatorAddress, '127.0.0.1:1');
    assert.equal(got?.deadlineAtMs, enlist.deadlineAtMs);
  });

  it('treats a duplicate commit as a no-op', async () => {
    const k = key();
    await store.transition(k, 'registered', enlist);
    await store.transition(k, 'prepared');
    assert.equal((await store.transition(k, 'committed')).changed, true);
    const dup = await store.transition(k, 'committed');
    assert.equal(dup.changed, false);
    assert.equal(dup.record.status, 'committed');
  });

  it('treats a duplicate rollback as a no-op and keeps the first reason', async () => {
    const k = key();
    await store.transition(k, 'registered', enlist);
    await store.transition(k, 'rolled_back', { reason: 'first' });
    const dup = await store.transition(k, 'rolled_back', { reason: 'second' });
    assert.equal(dup.changed, false);
    assert.equal((await store.get(k))?.reason, 'first');
  });

  it('records a rollback before anything (null rollback) and then refuses the late enlist and prepare', async () => {
    const k = key();
    const r = await store.transition(k, 'rolled_back', { resource: 'db', reason: 'null rollback' });
    assert.equal(r.changed, true);
    await assert.rejects(store.transition(k, 'registered', enlist), IllegalBranchTransitionError);
    await assert.rejects(store.transition(k, 'prepared'), IllegalBranchTransitionError);
    assert.equal((await store.get(k))?.status, 'rolled_back');
  });

  it('refuses prepare or commit of a branch it never saw', async () => {
    await assert.rejects(store.transition(key(), 'prepared'), BranchNotFoundError);
    await assert.rejects(store.transition(key(), 'committed'), BranchNotFoundError);
  });

  it('never moves a decided branch to the other decision', async () => {
    const a = key(1);
    const b = key(2);
    await store.transition(a, 'registered', enlist);
    await store.transition(a, 'committed');
    await assert.rejects(store.transition(a, 'rolled_back'), IllegalBranchTransitionError);
    await store.transition(b, 'registered', enlist);
    await store.transition(b, 'rolled_back');
    await assert.rejects(store.transition(b, 'committed'), IllegalBranchTransitionError);
  });

  it('keeps every state across a restart', async () => {
    const [a, b, c, d] = [key(1), key(2), key(3), key(4)];
    await store.transition(a, 'registered', enlist);
    await store.transition(b, 'registered', enlist);
    await store.transition(b, 'prepared');
    await store.transition(c, 'rolled_back', { reason: 'null rollback' });
    await store.transition(d, 'registered', enlist);
    await store.setData(d, { reservation: 'r-1' });
    store = await h.reopen();
    assert.equal((await store.get(a))?.status, 'registered');
    assert.equal((await store.get(b))?.status, 'prepared');
    assert.equal((await store.get(c))?.status, 'rolled_back');
    assert.deepEqual((await store.get(d))?.data, { reservation: 'r-1' });
    await assert.rejects(store.transition(c, 'registered', enlist), IllegalBranchTransitionError);
  });

  it('makes every one of many concurrent changes durable', async () => {
    const keys = Array.from({ length: 40 }, (_, i) => key(i));
    await Promise.all(keys.map((k) => store.transition(k, 'registered', enlist)));
    await Promise.all(keys.map((k) => store.transition(k, 'prepared')));
    store = await h.reopen();
    const prepared = await store.list(['prepared']);
    for (const k of keys) assert.ok(prepared.some((r) => r.xid === k.xid && r.branchId === k.branchId));
  });

  it('records data only on a registered branch', async () => {
    const k = key();
    await store.transition(k, 'registered', enlist);
    await store.setData(k, { a: '1' });
    await store.setData(k, { b: '2' });
    assert.deepEqual((await store.get(k))?.data, { a: '1', b: '2' });
    await store.transition(k, 'rolled_back');
    await assert.rejects(store.setData(k, { c: '3' }), IllegalBranchTransitionError);
  });

  it('lists by state and purges only old final branches', async () => {
    const [a, b] = [key(1), key(2)];
    await store.transition(a, 'registered', enlist);
    await store.transition(b, 'rolled_back');
    assert.deepEqual(
      (await store.list(['registered'])).map((r) => r.xid),
      [a.xid],
    );
    assert.equal(await store.purge(Date.now() + 1), 1);
    assert.equal(await store.get(b), undefined);
    assert.equal((await store.get(a))?.status, 'registered');
  });

  describe('a lazy enlist (volatile work)', () => {
    const lazy = { lazy: true };

    it('is seen at once, and its next change records the whole branch durably', async () => {
      const k = key();
      assert.equal((await store.transition(k, 'registered', enlist, lazy)).changed, true);
      assert.equal((await store.get(k))?.status, 'registered');
      assert.deepEqual(
        (await store.list(['registered'])).map((r) => r.xid),
        [k.xid],
      );
      assert.equal((await store.transition(k, 'registered', enlist, lazy)).changed, false, 'a duplicate');
      await store.transition(k, 'prepared');
      store = await h.reopen();
      const got = await store.get(k);
      assert.equal(got?.status, 'prepared');
      assert.equal(got?.resource, 'db');
      assert.equal(got?.coordinatorAddress, '127.0.0.1:1');
      assert.equal(got?.deadlineAtMs, enlist.deadlineAtMs);
    });

    it('may be lost in a restart before its next change, never turned into more', async () => {
      const k = key();
      await store.transition(k, 'registered', enlist, lazy);
      store = await h.reopen();
      assert.ok([undefined, 'registered'].includes((await store.get(k))?.status));
      await assert.rejects(store.transition(k, 'committed'), BranchNotFoundError);
    });

    it('keeps data recorded on it, and a rollback of it refuses a late enlist after a restart', async () => {
      const [a, b] = [key(1), key(2)];
      await store.transition(a, 'registered', enlist, lazy);
      await store.setData(a, { reservation: 'r-1' });
      await store.transition(b, 'registered', enlist, lazy);
      await store.transition(b, 'rolled_back', { reason: 'deadline' });
      store = await h.reopen();
      const got = await store.get(a);
      assert.equal(got?.status, 'registered');
      assert.deepEqual(got?.data, { reservation: 'r-1' });
      assert.equal((await store.get(b))?.reason, 'deadline');
      await assert.rejects(store.transition(b, 'registered', enlist, lazy), IllegalBranchTransitionError);
    });

    it('keeps every record a handler makes on it in parallel, durably', async () => {
      // Before, PgBranchStore INSERTed the held record for the first while the second's UPDATE found no row.
      const keys = [key(1), key(2), key(3), key(4), key(5)];
      for (const k of keys) await store.transition(k, 'registered', enlist, lazy);
      await Promise.all(
        keys.map((k) => Promise.all([store.setData(k, { seat: 'A' }), store.setData(k, { hotel: 'H' })])),
      );
      store = await h.reopen();
      for (const k of keys) {
        const got = await store.get(k);
        assert.equal(got?.status, 'registered');
        assert.deepEqual({ ...got?.data }, { seat: 'A', hotel: 'H' });
      }
    });

    it('of a branch already rolled back (null rollback) is refused', async () => {
      const k = key();
      await store.transition(k, 'rolled_back', { resource: 'db', reason: 'null rollback' });
      await assert.rejects(store.transition(k, 'registered', enlist, lazy), IllegalBranchTransitionError);
      assert.equal((await store.get(k))?.status, 'rolled_back');
    });
  });
}
