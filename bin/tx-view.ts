/**
 * How transactions look to an operator: the short state names typed on the command line and shown in tables
 * (ACTIVE rather than TX_STATE_ACTIVE), and the JSON shape of `--json` (names, not enum numbers; times in ms
 * since the epoch, 0 for "not set" as on the wire).
 */
import type { Transaction } from '../proto';
import {
  BranchState,
  branchStateToJSON,
  TxState,
  txStateToJSON,
  Vote,
  voteToJSON,
} from '../proto/gen/dmtp/v1/types';
import { formatDuration, UsageError } from './args';

const strip = (full: string, prefix: string) => (full.startsWith(prefix) ? full.slice(prefix.length) : full);

export const stateName = (s: TxState) => strip(txStateToJSON(s), 'TX_STATE_');
export const branchStateName = (s: BranchState) => strip(branchStateToJSON(s), 'BRANCH_STATE_');
export const voteName = (v: Vote) => (v === Vote.VOTE_UNSPECIFIED ? '' : strip(voteToJSON(v), 'VOTE_'));

export const STATE_NAMES = Object.values(TxState)
  .filter((v): v is TxState => typeof v === 'number' && v !== TxState.TX_STATE_UNSPECIFIED)
  .map((v) => stateName(v).toLowerCase());

/** `active`, `ACTIVE` or `TX_STATE_ACTIVE` → TxState.TX_STATE_ACTIVE. */
export function parseState(text: string, command: string): TxState {
  const name = strip(text.trim().toUpperCase(), 'TX_STATE_');
  const value = (TxState as unknown as Record<string, number>)[`TX_STATE_${name}`];
  if (value === undefined || value === TxState.TX_STATE_UNSPECIFIED) {
    throw new UsageError(`unknown state '${text}' (one of ${STATE_NAMES.join(', ')})`, command);
  }
  return value as TxState;
}

export function txJson(t: Transaction) {
  return {
    xid: t.xid,
    state: stateName(t.state),
    owner: t.owner,
    initiator: t.initiator,
    createdAtMs: t.createdAtMs,
    deadlineAtMs: t.deadlineAtMs,
    decidedAtMs: t.decidedAtMs,
    abortReason: t.abortReason,
    labels: t.labels,
    eventsStaged: t.eventsStaged,
    eventsDelivered: t.eventsDelivered,
    eventsAttempts: t.eventsAttempts,
    eventsLastError: t.eventsLastError,
    eventsNextRetryAtMs: t.eventsNextRetryAtMs,
    branches: t.branches.map((b) => ({
      branchId: b.ref?.branchId ?? '',
      service: b.ref?.service ?? '',
      instanceId: b.ref?.instanceId ?? '',
      address: b.ref?.address ?? '',
      resource: b.ref?.resource ?? '',
      state: branchStateName(b.state),
      vote: voteName(b.vote),
      reason: b.reason,
      attempts: b.attempts,
      lastError: b.lastError,
      nextRetryAtMs: b.nextRetryAtMs,
      settled: b.settled,
    })),
  };
}

/**
 * The `events` line of `tx show`: an aborted transaction's staged events are never published; a committed one's
 * that wait say why (the relay's failed attempts, when it tries again, the last failure).
 */
export function eventsText(t: Transaction, now = Date.now()): string {
  if (!t.eventsStaged) return '-';
  if (t.state === TxState.TX_STATE_ABORTING || t.state === TxState.TX_STATE_ABORTED)
    return `${t.eventsStaged} staged, discarded (aborted: never published)`;
  if (t.eventsDelivered) return `${t.eventsStaged} staged, delivered`;
  const why: string[] = [];
  if (t.eventsAttempts) {
    const next = t.eventsNextRetryAtMs ? `, next ${relative(t.eventsNextRetryAtMs, now)}` : '';
    why.push(`${t.eventsAttempts} attempt${t.eventsAttempts === 1 ? '' : 's'} failed${next}`);
  }
  if (t.eventsLastError) why.push(`last error: ${t.eventsLastError}`);
  return `${t.eventsStaged} staged, not delivered yet${why.length ? ` (${why.join('; ')})` : ''}`;
}

/**
 * The deadline as `tx list` and `tx show` print it: it aborts a transaction only while ACTIVE (phase 1 is bounded
 * by the prepare timeout, a decision by nothing), so once the transaction has left ACTIVE the list prints '-' and
 * `tx show` (`long`) the time and that it applies only while ACTIVE — "deadline 3m ago" beside a COMMITTING
 * transaction read as if it were about to be aborted.
 */
export function deadlineText(t: Transaction, now: number, long = false): string {
  const active = t.state === TxState.TX_STATE_ACTIVE;
  if (!long) return active ? relative(t.deadlineAtMs, now) : '-';
  if (!t.deadlineAtMs) return '-';
  const when = `${new Date(t.deadlineAtMs).toISOString()} (${relative(t.deadlineAtMs, now)}`;
  return active ? `${when})` : `${when}; applies only while ACTIVE)`;
}

/** `12s ago` / `in 30s` / '-' for 0 (not set on the wire). */
export function relative(atMs: number, now: number): string {
  if (!atMs) return '-';
  return atMs > now ? `in ${formatDuration(atMs - now)}` : `${formatDuration(now - atMs)} ago`;
}
