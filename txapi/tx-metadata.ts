/**
 * The transaction context and branch reports as they travel in gRPC metadata (keys in common/xid.ts `MD`):
 * writing them on the initiator's side, and reading + validating them on a participant's, where everything in
 * the metadata is untrusted input.
 */
import type { Metadata } from '@grpc/grpc-js';
import { InternalError, InvalidArgumentError, isAddress, isBranchId, MD, parseXid } from '../common';
import type { BranchRef } from '../proto/gen/dmtp/v1/types';
import { TransactionExpiredError } from './errors';

export interface WireContext {
  xid: string;
  coordinatorAddress: string;
  deadlineAtMs: number;
  /** Branch ids held by the participant calls up this call's chain (`MD.held`), outermost first. */
  held?: readonly string[];
}

/** Branch ids a chain carries at most: beyond that the outermost are dropped (a re-entry so far up goes unseen). */
export const MAX_HELD_BRANCHES = 32;

export interface ContextLimits {
  /** The longest a transaction may run (deadline - xid creation time); longer is a forged or broken caller. */
  maxTxTimeoutMs: number;
  /** How far an xid's creation time may be ahead of this clock. */
  maxClockSkewMs: number;
}

export const CONTEXT_LIMITS: ContextLimits = { maxTxTimeoutMs: 10 * 60_000, maxClockSkewMs: 60_000 };

export function writeContext(md: Metadata, ctx: WireContext): void {
  md.set(MD.xid, ctx.xid);
  md.set(MD.coordinator, ctx.coordinatorAddress);
  md.set(MD.deadline, String(ctx.deadlineAtMs));
  if (ctx.held?.length) md.set(MD.held, JSON.stringify(ctx.held.slice(-MAX_HELD_BRANCHES)));
}

function single(md: Metadata, key: string): string | undefined {
  const v = md.get(key);
  if (v.length === 0) return undefined;
  if (v.length > 1)
    throw new InvalidArgumentError(`metadata '${key}' given ${v.length} times`, { details: { key } });
  return typeof v[0] === 'string' ? v[0] : v[0].toString('utf8');
}

/**
 * The context of an incoming call, or undefined for a call outside any transaction. Throws
 * InvalidArgumentError for malformed or forged context (bad xid, bad address, a deadline before the xid was
 * minted or absurdly far after it, an xid from the future) and TransactionExpiredError past the deadline.
 */
export function readContext(
  md: Metadata,
  nowMs: number,
  limits: ContextLimits = CONTEXT_LIMITS,
): WireContext | undefined {
  const xid = single(md, MD.xid);
  if (xid === undefined) return undefined;
  const { createdAtMs } = parseXid(xid);
  const coordinatorAddress = single(md, MD.coordinator) ?? '';
  if (!isAddress(coordinatorAddress)) {
    throw new InvalidArgumentError(
      `transaction ${xid}: invalid coordinator address '${coordinatorAddress.slice(0, 80)}'`,
      {
        details: { xid },
      },
    );
  }
  const deadlineText = single(md, MD.deadline) ?? '';
  const deadlineAtMs = /^[0-9]{1,15}$/.test(deadlineText) ? Number(deadlineText) : NaN;
  if (!Number.isSafeInteger(deadlineAtMs)) {
    throw new InvalidArgumentError(`transaction ${xid}: invalid deadline '${deadlineText.slice(0, 40)}'`, {
      details: { xid },
    });
  }
  if (createdAtMs > nowMs + limits.maxClockSkewMs) {
    throw new InvalidArgumentError(`transaction ${xid}: minted in the future`, { details: { xid } });
  }
  if (deadlineAtMs < createdAtMs || deadlineAtMs - createdAtMs > limits.maxTxTimeoutMs) {
    throw new InvalidArgumentError(`transaction ${xid}: deadline does not fit the xid`, { details: { xid } });
  }
  if (deadlineAtMs <= nowMs) {
    throw new TransactionExpiredError(`transaction ${xid} expired ${nowMs - deadlineAtMs} ms ago`, {
      details: { xid },
    });
  }
  const held = readHeld(xid, single(md, MD.held));
  return held ? { xid, coordinatorAddress, deadlineAtMs, held } : { xid, coordinatorAddress, deadlineAtMs };
}

function readHeld(xid: string, text: string | undefined): string[] | undefined {
  if (text === undefined) return undefined;
  let held: unknown;
  try {
    held = JSON.parse(text);
  } catch {
    held = undefined;
  }
  if (!Array.isArray(held) || held.length > MAX_HELD_BRANCHES || !held.every(isBranchId)) {
    throw new InvalidArgumentError(
      `transaction ${xid}: invalid '${MD.held}' (a JSON array of at most ${MAX_HELD_BRANCHES} branch ids): ` +
        `'${text.slice(0, 80)}'`,
      { details: { xid, key: MD.held } },
    );
  }
  return held as string[];
}

/**
 * A branch as a participant reports it: the BranchRef, and the incarnation of the participant process that holds
 * its work (random per process). The same branch reported by another incarnation was opened again after a
 * restart, and the work of the calls before it is gone (a lazily enlisted branch leaves nothing behind).
 */
export type ReportedBranch = BranchRef & { incarnation?: string };

const INCARNATION_RE = /^[A-Za-z0-9_-]{1,32}$/;

/** Reports `ref` in a `dmtp-branch` trailer, or in another trailer of the same shape (`MD.failedBranch`). */
export function addBranchTrailer(trailers: Metadata, ref: ReportedBranch, key: string = MD.branch): void {
  trailers.add(key, JSON.stringify(ref));
}

/**
 * The branches reported in response trailers. Several `dmtp-branch` trailers (a participant's own branch and
 * those of its onward calls) may arrive as one value joined by ", " (HTTP/2 joins repeated fields, and so does
 * the multiplexed path), so each value is read as a comma-separated list of JSON objects. A report that cannot
 * be read is an InternalError, never skipped: skipping it would leave a branch that did work out of Commit
 * while the others commit. The call then fails for the caller, as any call whose branch did not come back does.
 */
export function readBranchTrailers(
  trailers: Metadata | undefined,
  key: string = MD.branch,
): ReportedBranch[] {
  const out: ReportedBranch[] = [];
  for (const v of trailers?.get(key) ?? []) {
    const text = typeof v === 'string' ? v : v.toString('utf8');
    let items: unknown;
    try {
      items = JSON.parse(`[${text}]`);
    } catch {
      throw unreadableBranch(key, text, 'not JSON');
    }
    for (const o of items as Partial<ReportedBranch>[]) {
      const ref = o && typeof o === 'object' ? toBranchRef(o) : undefined;
      if (!ref) throw unreadableBranch(key, text, 'not a branch');
      out.push(ref);
    }
  }
  return out;
}

function toBranchRef(o: Partial<ReportedBranch>): ReportedBranch | undefined {
  const ref: ReportedBranch = {
    branchId: String(o.branchId ?? ''),
    service: String(o.service ?? ''),
    instanceId: String(o.instanceId ?? ''),
    address: String(o.address ?? ''),
    resource: String(o.resource ?? ''),
  };
  if (o.incarnation !== undefined) {
    if (typeof o.incarnation !== 'string' || !INCARNATION_RE.test(o.incarnation)) return undefined;
    ref.incarnation = o.incarnation;
  }
  return isBranchId(ref.branchId) && ref.service && ref.instanceId && ref.resource ? ref : undefined;
}

function unreadableBranch(key: string, text: string, why: string): InternalError {
  const shown = text.length > 200 ? `${text.slice(0, 200)}…` : text;
  return new InternalError(
    `the callee reported a branch this caller cannot read in '${key}' (${why}): '${shown}'; the call counts as ` +
      'failed, and as it did work the transaction cannot commit it',
    { details: { trailer: key } },
  );
}
