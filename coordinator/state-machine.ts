/**
 * The global transaction state machine as one table. Legal moves (DESIGN.md):
 * ACTIVE → PREPARING → COMMITTING → COMMITTED, and ACTIVE | PREPARING → ABORTING → ABORTED.
 * COMMITTING is the commit point: the manager makes it durable before any phase-2 message.
 */
import { TxState } from '../proto/gen/dmtp/v1/types';
import { IllegalTransitionError } from './errors';

export { TxState };

export const VALID: Record<TxState, TxState[]> = {
  [TxState.TX_STATE_UNSPECIFIED]: [],
  [TxState.TX_STATE_ACTIVE]: [TxState.TX_STATE_PREPARING, TxState.TX_STATE_ABORTING],
  [TxState.TX_STATE_PREPARING]: [TxState.TX_STATE_COMMITTING, TxState.TX_STATE_ABORTING],
  [TxState.TX_STATE_COMMITTING]: [TxState.TX_STATE_COMMITTED],
  [TxState.TX_STATE_COMMITTED]: [],
  [TxState.TX_STATE_ABORTING]: [TxState.TX_STATE_ABORTED],
  [TxState.TX_STATE_ABORTED]: [],
};

export function canTransition(from: TxState, to: TxState): boolean {
  return VALID[from]?.includes(to) ?? false;
}

/** Returns `to` when the move is legal; throws IllegalTransitionError naming xid, from and to otherwise. */
export function transition(xid: string, from: TxState, to: TxState): TxState {
  if (!canTransition(from, to)) throw new IllegalTransitionError(xid, from, to);
  return to;
}

/** A decision exists (durable for COMMIT, presumed for ABORT): nothing may change the outcome any more. */
export function isDecided(s: TxState): boolean {
  return (
    s === TxState.TX_STATE_COMMITTING ||
    s === TxState.TX_STATE_COMMITTED ||
    s === TxState.TX_STATE_ABORTING ||
    s === TxState.TX_STATE_ABORTED
  );
}

export function isCommit(s: TxState): boolean {
  return s === TxState.TX_STATE_COMMITTING || s === TxState.TX_STATE_COMMITTED;
}

export function isFinal(s: TxState): boolean {
  return s === TxState.TX_STATE_COMMITTED || s === TxState.TX_STATE_ABORTED;
}
