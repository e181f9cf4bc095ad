/**
 * A graceful stop of an HA coordinator (real etcd, fake participants) retires an owner id — member key, lock and
 * route deleted, so nobody answers for its xids again — only once nothing of it has been in flight there for
 * `retireAfterMs`, as a taker retires one. Before, an empty log was enough: an abort writes nothing, so an owner
 * whose Rollback had not reached a prepared branch, or one taken over from a crashed coordinator moments before,
 * was retired at once, and its prepared branches had nobody left to tell them ABORT.
 */
import { strict as assert } from 'node:assert';
import { mintXid } from '../../../common';
import { haKeys } from '../../../coordinator/ha';
import { Outcome, TxState } from '../../../proto/gen/dmtp/v1/types';
import { branch, FakeGateway } from '../../support/coordinator-fake-gateway';
import { waitFor } from '../../support/coordinator-wait';
import { inProcessHa } from '../../support/ha-in-process';

describe('coordinator HA: retiring an owner at a graceful stop', function () {
  this.timeout(30_000);
  const ha = inProcessHa();
  const start = ha.start;
  const member = async (owner: string) => ha.etcd.get(haKeys.member(ha.prefix, owner)).string();

  it('keeps an owner whose abort has not reached a prepared branch: a survivor takes it over and answers ABORT', async () => {
    const gw = new FakeGateway();
    gw.set('a', { failPhase2: 1_000_000 }); // prepared; its Rollback is never acknowledged (participant down)
    gw.set('b', { prepare: 'error' }); // fails to prepare: the transaction aborts
    const c1 = await start('c1', gw);
    const x = mintXid('c1', Date.now());
    const out = await c1.manager!.commit(x, { branches: [branch('a'), branch('b')] });
    assert.equal(out.state, TxState.TX_STATE_ABORTED);
    await waitFor('a Rollback sent to a', async () =>
      gw.callsFor(x, 'rollback').some((c) => c.branchId === 'a'),
    );
    await c1.stop();
    assert.notEqual(await member('c1'), null, 'c1 is not retired: its abort has not reached branch a');

    const c2 = await start('c2', new FakeGateway());
    await waitFor('c2 takes c1 over', async () => c2.adoptions.managerOf('c1') !== undefined, 10_000);
    // Branch a's in-doubt recovery asks c1's route, now c2: presumed abort.
    assert.equal(await c2.adoptions.managerOf('c1')!.queryOutcome(x), Outcome.OUTCOME_ABORT);
  });

  it('keeps an owner taken over moments ago, even with an empty log: the next survivor takes it over', async () => {
    // 'dead' crashed in phase 1 of a transaction: its member key stays, its lock went with its lease, its log is
    // empty (an undecided transaction writes nothing), and a branch of it is prepared somewhere.
    await ha.etcd.put(haKeys.member(ha.prefix, 'dead')).value('dead');
    const s = await start('s', new FakeGateway());
    await waitFor('s takes dead over', async () => s.adoptions.managerOf('dead') !== undefined, 10_000);
    await s.stop();
    assert.notEqual(await member('dead'), null, 'dead is not retired at s stop');
    const s2 = await start('s2', new FakeGateway());
    await waitFor('s2 takes dead over', async () => s2.adoptions.managerOf('dead') !== undefined, 10_000);
    assert.equal(
      await s2.adoptions.managerOf('dead')!.queryOutcome(mintXid('dead', Date.now())),
      Outcome.OUTCOME_ABORT,
    );
  });

  it('retires an owner with nothing in flight for retireAfterMs at its graceful stop', async () => {
    const gw = new FakeGateway();
    const c = await start('quiet', gw, 300);
    const x = mintXid('quiet', Date.now());
    await c.manager!.commit(x, { branches: [branch('a'), branch('b')] });
    await waitFor('phase 2 done', async () => c.manager!.inFlight === 0);
    await new Promise((r) => setTimeout(r, 400));
    await c.stop();
    assert.equal(await member('quiet'), null, 'retired: nobody needs to take it over');
  });
});
