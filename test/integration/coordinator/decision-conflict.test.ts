/**
 * A commit decision the etcd log refuses because another writer's record is under the key (an operator's
 * `etcdctl put`, a restore, an unfenced twin): the stored record is the durable truth. Before, the transaction
 * stayed PREPARING for good ("its decision is being written"), the Commit caller heard FAILED_PRECONDITION (an
 * SDK reads that as aborted) and prepared branches stayed in doubt.
 */
import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { mintXid } from '../../../common';
import { EtcdTxLog } from '../../../coordinator/log/etcd-log';
import { encodeRecord } from '../../../coordinator/log/record-codec';
import { TransactionManager } from '../../../coordinator/manager';
import { Outcome, TxState, type BranchRef } from '../../../proto/gen/dmtp/v1/types';
import { branch, FakeGateway } from '../../support/coordinator-fake-gateway';
import { waitFor } from '../../support/coordinator-wait';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';

/** Prepare answers only once `release()` is called: the test writes its foreign record meanwhile. */
class HeldPrepare extends FakeGateway {
  private open!: () => void;
  private readonly gate = new Promise<void>((r) => (this.open = r));
  /** Prepare calls waiting at the gate. */
  waiting = 0;
  release(): void {
    this.open();
  }
  override async prepare(b: BranchRef, xid: string) {
    this.waiting++;
    await this.gate;
    return super.prepare(b, xid);
  }
}

describe('a commit decision refused by the log (another writer under the key)', function () {
  this.timeout(20_000);
  let etcd: Etcd3;
  let log: EtcdTxLog;
  let m: TransactionManager;
  let gw: HeldPrepare;
  let prefix: string;
  const ID = 'conflict-owner';

  beforeEach(async function () {
    prefix = `/dmtp-test/${nameFor(this)}`;
    etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    log = new EtcdTxLog({ endpoints: ETCD_ENDPOINTS, prefix });
    gw = new HeldPrepare();
  });
  afterEach(async () => {
    await m?.stop();
    await log.close();
    await etcd.delete().prefix(prefix);
    etcd.close();
  });

  async function start(logPrepare: boolean): Promise<void> {
    m = new TransactionManager({
      id: ID,
      log,
      gateway: gw,
      options: { decisionTimeoutMs: 5_000, logPrepare },
    });
    await m.start();
  }

  async function foreignRecord(xid: string, state: TxState): Promise<void> {
    const now = Date.now();
    await etcd.put(`${prefix}/tx/${ID}/${xid}`).value(
      encodeRecord({
        xid,
        state,
        branches: [branch('a'), branch('b')],
        events: [],
        createdAtMs: now,
        deadlineAtMs: now + 30_000,
        decidedAtMs: state === TxState.TX_STATE_COMMITTED ? now : 0,
        initiator: 'foreign',
        labels: {},
        abortReason: '',
      }),
    );
  }

  it('an undecided record there: the transaction aborts (every branch rolled back), not left PREPARING', async () => {
    await start(false);
    const xid = mintXid(ID);
    const commit = m.commit(xid, { branches: [branch('a'), branch('b')], firstAttempt: true });
    await waitFor('phase 1', async () => gw.waiting === 2);
    await foreignRecord(xid, TxState.TX_STATE_PREPARING);
    gw.release();
    const out = await commit;
    assert.equal(out.state, TxState.TX_STATE_ABORTED);
    assert.match(out.abortReason, /commit decision refused by the log .*no commit is durable/);
    assert.equal(await m.queryOutcome(xid), Outcome.OUTCOME_ABORT);
    await waitFor('both branches rolled back', async () => gw.callsFor(xid, 'rollback').length === 2);
    assert.equal(gw.callsFor(xid, 'commit').length, 0);
    await waitFor('nothing left in flight', async () => m.inFlight === 0);
  });

  it('a committed record there: that decision is this one, and phase 2 commits every branch', async () => {
    // (A stored COMMITTING record is no conflict at all: the log takes the same state as an earlier attempt
    // that landed.) A record that says COMMITTED is another commit decision: this one is taken as it.
    await start(false);
    const xid = mintXid(ID);
    const commit = m.commit(xid, { branches: [branch('a'), branch('b')], firstAttempt: true });
    await waitFor('phase 1', async () => gw.waiting === 2);
    await foreignRecord(xid, TxState.TX_STATE_COMMITTED);
    gw.release();
    const out = await commit;
    assert.equal(out.state, TxState.TX_STATE_COMMITTED);
    assert.equal(await m.queryOutcome(xid), Outcome.OUTCOME_COMMIT);
    await waitFor('both branches committed', async () => gw.callsFor(xid, 'commit').length === 2);
    assert.equal(gw.callsFor(xid, 'rollback').length, 0);
    await waitFor('finished', async () => m.inFlight === 0);
  });

  it('its own PREPARING record deleted meanwhile (logPrepare): no commit is durable, so it aborts', async () => {
    await start(true);
    const xid = mintXid(ID);
    const commit = m.commit(xid, { branches: [branch('a'), branch('b')], firstAttempt: true });
    await waitFor('phase 1', async () => gw.waiting === 2);
    assert.equal((await etcd.delete().key(`${prefix}/tx/${ID}/${xid}`)).deleted, '1', 'its record was there');
    gw.release();
    const out = await commit;
    assert.equal(out.state, TxState.TX_STATE_ABORTED);
    await waitFor('both branches rolled back', async () => gw.callsFor(xid, 'rollback').length === 2);
    assert.equal(gw.callsFor(xid, 'commit').length, 0);
    await waitFor('nothing left in flight', async () => m.inFlight === 0);
  });
});
