import { strict as assert } from 'node:assert';
import { eventsText } from '../../../bin/tx-view';
import { Transaction } from '../../../proto';
import { TxState } from '../../../proto/gen/dmtp/v1/types';

describe('dmtp tx show: the events line', () => {
  const tx = (state: TxState, eventsStaged: number, eventsDelivered = false) =>
    Transaction.fromPartial({ xid: 'c:1:1', state, eventsStaged, eventsDelivered });

  it('says whether a committed transaction’s events were delivered', () => {
    assert.equal(eventsText(tx(TxState.TX_STATE_COMMITTING, 2)), '2 staged, not delivered yet');
    assert.equal(eventsText(tx(TxState.TX_STATE_COMMITTED, 2, true)), '2 staged, delivered');
    assert.equal(eventsText(tx(TxState.TX_STATE_PREPARING, 0)), '-');
  });

  it('says an aborted transaction’s events are discarded, not "not delivered yet"', () => {
    for (const s of [TxState.TX_STATE_ABORTING, TxState.TX_STATE_ABORTED])
      assert.equal(eventsText(tx(s, 1)), '1 staged, discarded (aborted: never published)');
  });
});
