import { strict as assert } from 'node:assert';
import { status } from '@grpc/grpc-js';
import { toStatus } from '../../../common';
import { IllegalTransitionError } from '../../../coordinator/errors';
import { canTransition, transition, VALID } from '../../../coordinator/state-machine';
import { TxState } from '../../../proto/gen/dmtp/v1/types';

const S = TxState;
const ALL = Object.values(S).filter((v): v is TxState => typeof v === 'number');
const LEGAL: [TxState, TxState][] = [
  [S.TX_STATE_ACTIVE, S.TX_STATE_PREPARING],
  [S.TX_STATE_ACTIVE, S.TX_STATE_ABORTING],
  [S.TX_STATE_PREPARING, S.TX_STATE_COMMITTING],
  [S.TX_STATE_PREPARING, S.TX_STATE_ABORTING],
  [S.TX_STATE_COMMITTING, S.TX_STATE_COMMITTED],
  [S.TX_STATE_ABORTING, S.TX_STATE_ABORTED],
];

describe('coordinator state machine', () => {
  it('the table holds exactly the moves of DESIGN.md', () => {
    const table = ALL.flatMap((from) => VALID[from].map((to) => [from, to] as [TxState, TxState]));
    assert.deepEqual(table.sort(), [...LEGAL].sort());
  });

  for (const [from, to] of LEGAL) {
    it(`allows ${S[from]} -> ${S[to]}`, () => {
      assert.equal(transition('c1:1:1', from, to), to);
    });
  }

  const illegal = ALL.flatMap((from) => ALL.map((to) => [from, to] as [TxState, TxState])).filter(
    ([f, t]) => !LEGAL.some(([a, b]) => a === f && b === t),
  );
  it(`refuses every one of the ${illegal.length} other moves with IllegalTransitionError {xid, from, to}`, () => {
    for (const [from, to] of illegal) {
      assert.equal(canTransition(from, to), false);
      assert.throws(
        () => transition('c1:1:1', from, to),
        (e: unknown) =>
          e instanceof IllegalTransitionError &&
          e.xid === 'c1:1:1' &&
          e.from === from &&
          e.to === to &&
          e.message.includes(S[from]) &&
          toStatus(e).code === status.FAILED_PRECONDITION,
        `${S[from]} -> ${S[to]}`,
      );
    }
  });
});
