/**
 * The one contract every TxLog implementation passes (memory and file in unit tests, etcd in integration tests).
 * `make(owner)` returns a fresh, empty log for a test; `reopen` a second instance over the same storage
 * (the etcd log's data survives it; the memory log has no second instance and skips those checks).
 */
import { strict as assert } from 'node:assert';
import { mintXid } from '../../common';
import { LogConflictError } from '../../coordinator/errors';
import type { TxLog, TxRecord } from '../../coordinator/log/tx-log';
import { TxState } from '../../proto/gen/dmtp/v1/types';

export interface LogFactory {
  make(ctx: Mocha.Context): Promise<TxLog>;
  /** Another log over the same storage as the last `make` (undefined when the log has no storage to share). */
  reopen?(): Promise<TxLog>;
  /** Removes what the test stored (after its logs are closed). */
  cleanup?(): Promise<void>;
  /**
   * One writer at a time (the file log's lock): `reopen` closes the last log first, the tests write through the
   * reopened one, and the two-writer conflict test does not apply.
   */
  exclusive?: boolean;
  /** A log whose clock the test drives: its outcome retention and how to move its clock (marker expiry). */
  expiry?: { retentionSeconds: number; advance(ms: number): void };
}

export function record(
  xid: string,
  state = TxState.TX_STATE_COMMITTING,
  extra: Partial<TxRecord> = {},
): TxRecord {
  return {
    xid,
    state,
    branches: [{ branchId: 'b1', service: 'svc', instanceId: 'i1', address: '127.0.0.1:1', resource: 'db' }],
    events: [
      {
        topic: 'orders',
        key: Buffer.from('k'),
        value: Buffer.from([0, 1, 2, 255]),
        headers: { h: 'v' },
        sequence: 0,
      },
    ],
    createdAtMs: 1,
    deadlineAtMs: 2,
    decidedAtMs: 3,
    initiator: 'test',
    labels: { a: 'b' },
    abortReason: '',
    ...extra,
  };
}

export function txLogContract(name: string, factory: LogFactory): void {
  describe(`TxLog contract: ${name}`, function () {
    let log: TxLog;
    const opened: TxLog[] = [];
    const owner = 'contract-owner';

    beforeEach(async function () {
      log = await factory.make(this);
      opened.push(log);
    });
    afterEach(async () => {
      while (opened.length) await opened.pop()!.close();
      await factory.cleanup?.();
    });

    it('creates a record and reads it back byte for byte', async () => {
      const xid = mintXid(owner);
      await log.create(record(xid));
      const got = await log.get(xid);
      assert.deepEqual(
        { ...got, events: got!.events.map((e) => ({ ...e, key: [...e.key], value: [...e.value] })) },
        {
          ...record(xid),
          events: record(xid).events.map((e) => ({ ...e, key: [...e.key], value: [...e.value] })),
        },
      );
    });

    it('keeps the onePhase flag of a one-phase record, and no flag on others', async () => {
      const one = mintXid(owner);
      await log.create(record(one, TxState.TX_STATE_PREPARING, { events: [], onePhase: true }));
      const two = mintXid(owner);
      await log.create(record(two));
      assert.equal((await log.get(one))?.onePhase, true);
      assert.equal('onePhase' in (await log.get(two))!, false);
      assert.deepEqual(
        (await log.load(owner)).filter((r) => r.onePhase).map((r) => r.xid),
        [one],
      );
    });

    it('create is create-only: the same state again is a no-op, another state is a conflict', async () => {
      const xid = mintXid(owner);
      await log.create(record(xid));
      await log.create(record(xid));
      await assert.rejects(log.create(record(xid, TxState.TX_STATE_PREPARING)), LogConflictError);
    });

    it('updates a record it wrote (compare-and-swap) and refuses to update a missing one', async () => {
      const xid = mintXid(owner);
      await log.create(record(xid, TxState.TX_STATE_PREPARING));
      await log.update(record(xid, TxState.TX_STATE_COMMITTING));
      assert.equal((await log.get(xid))!.state, TxState.TX_STATE_COMMITTING);
      await assert.rejects(log.update(record(mintXid(owner))), LogConflictError);
    });

    it('removes records idempotently', async () => {
      const xid = mintXid(owner);
      await log.create(record(xid));
      await log.remove(xid);
      await log.remove(xid);
      assert.equal(await log.get(xid), undefined);
    });

    it('finishCommitted replaces the record with a committed marker in one write; idempotent', async () => {
      const xid = mintXid(owner);
      await log.create(record(xid));
      assert.equal(await log.committedMarker(xid), undefined, 'no marker while the record is there');
      await log.finishCommitted(xid, 42);
      await log.finishCommitted(xid, 42);
      assert.equal(await log.get(xid), undefined);
      assert.deepEqual(await log.load(owner), [], 'a marker is no record to recover');
      assert.deepEqual(await log.committedMarker(xid), { decidedAtMs: 42 });
      assert.equal(await log.committedMarker(mintXid(owner)), undefined, 'unknown xid: no marker');
      if (factory.reopen) {
        const other = await factory.reopen();
        opened.push(other);
        assert.deepEqual(await other.committedMarker(xid), { decidedAtMs: 42 }, 'durable: read back');
      }
    });

    const expiring = factory.expiry ? it : undefined;
    expiring?.('a committed marker expires after the outcome retention', async () => {
      const { retentionSeconds, advance } = factory.expiry!;
      const xid = mintXid(owner);
      await log.finishCommitted(xid, 7);
      advance(retentionSeconds * 750 - 1);
      assert.deepEqual(
        await log.committedMarker(xid),
        { decidedAtMs: 7 },
        'kept at least 0.75× the retention',
      );
      advance(retentionSeconds * 250 + 1);
      assert.equal(await log.committedMarker(xid), undefined, 'gone after the retention');
    });

    it('loads only the records of the owner asked for', async () => {
      const mine = [mintXid(owner), mintXid(owner)];
      await Promise.all([
        ...mine.map((x) => log.create(record(x))),
        log.create(record(mintXid('someone-else'))),
      ]);
      const loaded = (await log.load(owner)).map((r) => r.xid).sort();
      assert.deepEqual(loaded, [...mine].sort());
    });

    it('group-commits 1,500 concurrent writes and every one is durable when it resolves', async function () {
      this.timeout(30_000);
      const xids = Array.from({ length: 1500 }, () => mintXid(owner));
      await Promise.all(xids.map((x) => log.create(record(x, TxState.TX_STATE_COMMITTING, { events: [] }))));
      const other = factory.reopen ? await factory.reopen() : log;
      if (other !== log) opened.push(other);
      assert.equal((await other.load(owner)).length, 1500);
      const writer = factory.exclusive ? other : log;
      await Promise.all(xids.map((x) => writer.remove(x)));
      assert.equal((await other.load(owner)).length, 0);
      if (factory.exclusive) {
        const third = await factory.reopen!();
        opened.push(third);
        assert.equal((await third.load(owner)).length, 0, 'the removals are durable too');
      }
    });

    // Only logs whose storage takes several writers at once have a second instance beside the first.
    const shared = factory.reopen && !factory.exclusive ? it : undefined;
    shared?.('an update by a second log instance after a foreign change is a conflict', async function () {
      const xid = mintXid(owner);
      await log.create(record(xid, TxState.TX_STATE_PREPARING));
      const other = await factory.reopen!();
      opened.push(other);
      await other.load(owner);
      await other.update(record(xid, TxState.TX_STATE_ABORTING));
      await assert.rejects(log.update(record(xid, TxState.TX_STATE_COMMITTING)), LogConflictError);
      assert.equal((await other.get(xid))!.state, TxState.TX_STATE_ABORTING);
    });
  });
}
