import { strict as assert } from 'node:assert';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { ManualClock, mintXid } from '../../../common';
import type { PrepareResult } from '../../../coordinator/gateway';
import { MemoryTxLog } from '../../../coordinator/log/memory-log';
import { TransactionManager } from '../../../coordinator/manager';
import { TxState, Vote, type BranchRef } from '../../../proto/gen/dmtp/v1/types';
import { branch, FakeGateway } from '../../support/coordinator-fake-gateway';

const ID = 'coord-remembered';
/** MAX_REASON_CHARS of coordinator/tx.ts: the longest abort reason kept. */
const MAX_REASON_CHARS = 1_000;
const tick = async (n = 5) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};
/**
 * A reason of `chars` characters as one flat string (as a decoded request's field is; padEnd/repeat build a tree
 * of shared pieces that costs next to nothing), different for each `seed`.
 */
const longReason = (seed: number, chars = 1 << 20) => {
  const b = Buffer.alloc(chars, 97 + (seed % 26));
  b.write(`${seed}:`);
  return b.toString('latin1');
};

/** A participant that votes ABORT with the reason it is given (a reason as long as a message allows). */
class AbortingGateway extends FakeGateway {
  voteReason = '';
  override async prepare(ref: BranchRef, xid: string): Promise<PrepareResult> {
    this.calls.push({ op: 'prepare', xid, branchId: ref.branchId });
    return { vote: Vote.VOTE_ABORT, reason: this.voteReason };
  }
}

describe('TransactionManager: what a finished transaction leaves in memory (remembered outcomes)', function () {
  let clock: ManualClock;
  let gw: AbortingGateway;
  let m: TransactionManager;
  const xid = () => mintXid(ID, clock.now());

  beforeEach(() => {
    clock = new ManualClock();
    gw = new AbortingGateway();
    m = new TransactionManager({
      id: ID,
      log: new MemoryTxLog({ unsafeForTests: true }),
      gateway: gw,
      clock,
      options: { prepareTimeoutMs: 1_000 },
    });
  });
  afterEach(() => m.stop());

  it("keeps a Rollback's reason to MAX_REASON_CHARS, in the answer and in the remembered outcome", async () => {
    const x = xid();
    await m.enlist(x, branch('a'));
    const reason = longReason(1);
    assert.equal(await m.rollback(x, reason), TxState.TX_STATE_ABORTED);
    await tick();
    await m.finished(x);
    const view = await m.get(x);
    assert.equal(view.state, TxState.TX_STATE_ABORTED);
    assert.equal(view.abortReason.length, MAX_REASON_CHARS);
    assert.equal(view.abortReason, reason.slice(0, MAX_REASON_CHARS));
  });

  it("keeps a participant's abort vote reason to MAX_REASON_CHARS", async () => {
    const x = xid();
    gw.voteReason = longReason(2);
    const out = await m.commit(x, { branches: [branch('a'), branch('b')] });
    assert.equal(out.state, TxState.TX_STATE_ABORTED);
    assert.ok(out.abortReason.length <= MAX_REASON_CHARS, `answered ${out.abortReason.length} chars`);
    await tick();
    await m.finished(x);
    const view = await m.get(x);
    assert.ok(view.abortReason.startsWith('branch a voted abort: 2:ccc'), view.abortReason.slice(0, 40));
    assert.ok(view.abortReason.length <= MAX_REASON_CHARS, `remembered ${view.abortReason.length} chars`);
  });

  it('does not hold on to the long reasons it was given (a cut reason is a string of its own)', async () => {
    // gc() for this test: heap in use is measured after full collections.
    v8.setFlagsFromString('--expose_gc');
    const gc = vm.runInNewContext('gc') as () => void;
    // Strings past ~1 MB that Node makes from bytes live outside the heap (external): both are counted.
    const used = () => (gc(), gc(), process.memoryUsage()).heapUsed + process.memoryUsage().external;
    const n = 48;
    const before = used();
    for (let i = 0; i < n; i++) {
      const x = xid();
      await m.enlist(x, branch('a'));
      await m.rollback(x, longReason(i + 10)); // 1 MB each
      await tick();
      await m.finished(x);
    }
    // The outcomes are remembered (answers stay right); what they cost is their cut reasons, not n MB.
    assert.equal(m.inFlight, 0);
    const grewMb = (used() - before) / (1 << 20);
    assert.ok(grewMb < 8, `the heap kept ${grewMb.toFixed(1)} MB after ${n} rollbacks with 1 MB reasons`);
  });
});
