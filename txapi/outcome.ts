/** What became of a transaction, as the initiator sees it. */
export type TxOutcome =
  | { status: 'committed' }
  | { status: 'aborted'; reason: string }
  /** The coordinator could not be reached at the commit point; ask later with `outcomeOf(xid)`. */
  | { status: 'unknown'; reason: string }
  /** No decision yet (asked with `outcomeOf` while the transaction is still running). */
  | { status: 'pending' };
