/**
 * HA routing inside one coordinator: a call for an xid goes to the manager of the xid's owner — this
 * coordinator's own, or the one running a failed coordinator's transactions it took over. Anything else goes
 * to the own manager, which refuses a foreign xid with FAILED_PRECONDITION naming the owner.
 */
import { ownerOf, UnavailableError } from '../common';
import type { TransactionManager } from './manager';
import type { CoordinatorBackend } from './service';

export interface AdoptedManager {
  manager: TransactionManager;
  /** False while its log is being loaded: until then it cannot tell what it owns. */
  ready: boolean;
}

export function routedBackend(
  own: TransactionManager,
  adopted: () => Map<string, AdoptedManager>,
): CoordinatorBackend {
  const of = (xid: string | undefined): TransactionManager => {
    if (!xid) return own;
    let owner: string;
    try {
      owner = ownerOf(xid);
    } catch {
      return own; // the own manager names the malformed xid
    }
    const a = adopted().get(owner);
    if (!a) return own;
    if (!a.ready) {
      // Answering from a manager still loading its log would presume abort for what it has not read yet.
      throw new UnavailableError(
        `transaction ${xid}: coordinator '${owner}' failed and its transactions are being taken over; ask again`,
        { details: { xid, owner } },
      );
    }
    return a.manager;
  };
  return {
    begin: (o = {}) => of(o.xid).begin(o),
    enlist: (xid, ref) => of(xid).enlist(xid, ref),
    commit: (xid, o) => of(xid).commit(xid, o),
    rollback: (xid, reason, branches, o) => of(xid).rollback(xid, reason, branches, o),
    get: (xid) => of(xid).get(xid),
    resolve: (xid, outcome, reason) => of(xid).resolve(xid, outcome, reason),
    settleBranch: (xid, branchId, reason) => of(xid).settleBranch(xid, branchId, reason),
    queryOutcome: (xid) => of(xid).queryOutcome(xid),
    list: (q = {}) => {
      const first = own.list(q);
      if (q.pageToken) return first; // later pages: the own manager's only
      const transactions = [...first.transactions];
      for (const a of adopted().values()) {
        if (a.ready) transactions.push(...a.manager.list({ ...q, pageToken: '' }).transactions);
      }
      return { transactions, nextPageToken: first.nextPageToken };
    },
  };
}
