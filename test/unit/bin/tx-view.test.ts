import { strict as assert } from 'node:assert';
import { deadlineText, eventsText } from '../../../bin/tx-view';
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

  it('says why a committed transaction’s events wait: failed attempts, the next, the last error', () => {
    const now = 1_000_000;
    const waiting = Transaction.fromPartial({
      xid: 'c:1:1',
      state: TxState.TX_STATE_COMMITTING,
      eventsStaged: 2,
      eventsAttempts: 3,
      eventsNextRetryAtMs: now + 4_000,
      eventsLastError: 'topic orderz: topic-unavailable, 1 of 2 events not published: no such topic',
    });
    assert.equal(
      eventsText(waiting, now),
      '2 staged, not delivered yet (3 attempts failed, next in 4s; ' +
        'last error: topic orderz: topic-unavailable, 1 of 2 events not published: no such topic)',
    );
    const noSink = Transaction.fromPartial({
      xid: 'c:1:1',
      state: TxState.TX_STATE_COMMITTING,
      eventsStaged: 1,
      eventsLastError: 'coordinator c has no event sink',
    });
    assert.equal(
      eventsText(noSink, now),
      '1 staged, not delivered yet (last error: coordinator c has no event sink)',
    );
  });

  it('says an aborted transaction’s events are discarded, not "not delivered yet"', () => {
    for (const s of [TxState.TX_STATE_ABORTING, TxState.TX_STATE_ABORTED])
      assert.equal(eventsText(tx(s, 1)), '1 staged, discarded (aborted: never published)');
  });
});

describe('dmtp tx list / tx show: the deadline', () => {
  const now = Date.UTC(2026, 10, 30, 12, 0, 0);
  const tx = (state: TxState, deadlineAtMs: number) =>
    Transaction.fromPartial({ xid: 'c:1:1', state, deadlineAtMs });

  it('shows an ACTIVE transaction’s deadline, which aborts it', () => {
    assert.equal(deadlineText(tx(TxState.TX_STATE_ACTIVE, now + 30_000), now), 'in 30s');
    assert.equal(
      deadlineText(tx(TxState.TX_STATE_ACTIVE, now + 30_000), now, true),
      '2026-11-30T12:00:30.000Z (in 30s)',
    );
  });

  it('does not show a passed deadline beside a transaction it no longer applies to as if it were due', () => {
    const past = now - 180_000;
    for (const s of [
      TxState.TX_STATE_PREPARING,
      TxState.TX_STATE_COMMITTING,
      TxState.TX_STATE_COMMITTED,
      TxState.TX_STATE_ABORTING,
      TxState.TX_STATE_ABORTED,
    ]) {
      assert.equal(deadlineText(tx(s, past), now), '-', `list, ${TxState[s]}`);
    }
    assert.equal(
      deadlineText(tx(TxState.TX_STATE_COMMITTING, past), now, true),
      '2026-11-30T11:57:00.000Z (3m00s ago; applies only while ACTIVE)',
    );
    assert.equal(
      deadlineText(tx(TxState.TX_STATE_PREPARING, past), now, true),
      '2026-11-30T11:57:00.000Z (3m00s ago; applies only while ACTIVE)',
    );
    assert.equal(deadlineText(tx(TxState.TX_STATE_ABORTED, 0), now, true), '-');
  });
});
