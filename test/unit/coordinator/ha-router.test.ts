/** HA routing inside one coordinator (ManualClock, memory logs, fake gateway): which manager answers an xid. */
import { strict as assert } from 'node:assert';
import { status } from '@grpc/grpc-js';
import { ManualClock, mintXid, toStatus } from '../../../common';
import { routedBackend, type AdoptedManager } from '../../../coordinator/ha-router';
import { MemoryTxLog } from '../../../coordinator/log/memory-log';
import { TransactionManager } from '../../../coordinator/manager';
import { Outcome, TxState } from '../../../proto/gen/dmtp/v1/types';
import { branch, FakeGateway } from '../../support/coordinator-fake-gateway';
import { record } from '../../support/tx-log-contract';

describe('coordinator HA routing', () => {
  it('answers UNAVAILABLE for a taken-over owner until its log is loaded, never a presumed ABORT; then its manager answers', async () => {
    const clock = new ManualClock();
    // 'b' never acknowledges: its participant is gone for good, and an operator settles it through the router.
    const gw = new FakeGateway().set('b', { failPhase2: 1e9 });
    const own = new TransactionManager({
      id: 'alive',
      log: new MemoryTxLog({ unsafeForTests: true }),
      gateway: gw,
      clock,
    });
    // The dead owner's log holds a decided commit whose phase 2 had not finished.
    const deadLog = new MemoryTxLog({ unsafeForTests: true });
    const x = mintXid('dead', clock.now());
    await deadLog.create(
      record(x, TxState.TX_STATE_COMMITTING, { branches: [branch('a'), branch('b')], events: [] }),
    );
    let loaded!: () => void;
    const gate = new Promise<void>((r) => (loaded = r));
    const load = deadLog.load.bind(deadLog);
    deadLog.load = async (owner: string) => (await gate, load(owner));
    const taker = new TransactionManager({ id: 'dead', log: deadLog, gateway: gw, clock, takenOver: true });
    const adopted = new Map<string, AdoptedManager>([['dead', { manager: taker, ready: false }]]);
    const backend = routedBackend(own, () => adopted);
    try {
      const starting = taker.start();
      const unavailable = (e: unknown) => toStatus(e).code === status.UNAVAILABLE;
      await assert.rejects(async () => backend.queryOutcome(x), unavailable);
      await assert.rejects(
        async () => backend.commit(x, { branches: [branch('a'), branch('b')] }),
        unavailable,
      );
      await assert.rejects(async () => backend.settleBranch(x, 'b'), unavailable);
      assert.deepEqual(backend.list({}).transactions, [], 'not listed while loading');
      loaded();
      await starting;
      adopted.get('dead')!.ready = true;
      assert.equal(await backend.queryOutcome(x), Outcome.OUTCOME_COMMIT);
      assert.equal((await backend.settleBranch(x, 'b', 'done by hand')).settled, true);
      await taker.finished(x);
      assert.deepEqual(gw.callsFor(x, 'rollback'), [], 'nothing was rolled back');
      assert.equal(gw.callsFor(x, 'commit').length, 2);
    } finally {
      await taker.stop();
      await own.stop();
    }
  });
});
