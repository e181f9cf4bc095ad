/**
 * Input checks against the manager's limits, each failing with the status the proto promises:
 * INVALID_ARGUMENT for malformed or out-of-range values, RESOURCE_EXHAUSTED for a limit on size or count.
 */
import {
  BRANCH_ID_MAX_CHARS,
  InvalidArgumentError,
  isAddress,
  isBranchId,
  isResourceName,
  RESOURCE_MAX_CHARS,
  ResourceExhaustedError,
} from '../common';
import {
  ENVELOPE_DEFAULTS,
  ENVELOPE_OVERHEAD_BYTES,
  loggedEventBytes,
  MAX_LOGGED_EVENT_BYTES,
  stagedEventBytes,
  validateTopic,
} from '../events';
import type { BranchRef, StagedEvent } from '../proto/gen/dmtp/v1/types';
import type { ManagerLimits } from './options';

/** Longest service name or instance id of a branch reference (and of a List filter). */
export const MAX_ID_CHARS = 256;

export function checkTimeout(timeoutMs: number | undefined, l: ManagerLimits): number {
  const t = timeoutMs ?? 0;
  if (!Number.isInteger(t) || t < 0)
    throw new InvalidArgumentError(`timeout_ms must be a non-negative integer`);
  if (t > l.maxTimeoutMs) {
    throw new InvalidArgumentError(`timeout_ms ${t} is above the maximum of ${l.maxTimeoutMs} ms`, {
      details: { timeoutMs: t, maxTimeoutMs: l.maxTimeoutMs },
    });
  }
  return t === 0 ? l.defaultTimeoutMs : t;
}

export function checkLabels(
  initiator: string | undefined,
  labels: Record<string, string> | undefined,
  l: ManagerLimits,
) {
  if ((initiator ?? '').length > l.maxLabelChars) {
    throw new InvalidArgumentError(`initiator is longer than ${l.maxLabelChars} characters`);
  }
  const entries = Object.entries(labels ?? {});
  if (entries.length > l.maxLabels) {
    throw new InvalidArgumentError(`${entries.length} labels: at most ${l.maxLabels} are allowed`);
  }
  for (const [k, v] of entries) {
    if (k.length === 0 || k.length > l.maxLabelChars || v.length > l.maxLabelChars) {
      throw new InvalidArgumentError(
        `label '${k.slice(0, 40)}': keys 1-${l.maxLabelChars}, values 0-${l.maxLabelChars} characters`,
      );
    }
  }
}

/**
 * A branch reference by the wire rules every participant follows (common/branch-ref.ts): a reference outside
 * them could never reach its participant in phase 2, so it is refused here, before anything is held.
 */
export function checkBranch(ref: BranchRef | undefined, field: string): BranchRef {
  if (!ref) throw new InvalidArgumentError(`${field} is required`);
  if (!ref.branchId) throw new InvalidArgumentError(`${field}.branchId is required`);
  if (!isBranchId(ref.branchId)) {
    throw new InvalidArgumentError(
      `${field}.branchId '${String(ref.branchId).slice(0, 140)}' is invalid (1-${BRANCH_ID_MAX_CHARS} visible ASCII characters)`,
    );
  }
  if (!ref.address) throw new InvalidArgumentError(`${field}.address is required`);
  if (!isAddress(ref.address)) {
    throw new InvalidArgumentError(
      `${field}.address '${String(ref.address).slice(0, 80)}' is invalid (host:port expected)`,
    );
  }
  const resource = ref.resource ?? '';
  if (!isResourceName(resource)) {
    throw new InvalidArgumentError(
      `${field}.resource '${resource.slice(0, 80)}' is invalid (0-${RESOURCE_MAX_CHARS} visible ASCII characters)`,
    );
  }
  for (const k of ['service', 'instanceId'] as const) {
    if ((ref[k] ?? '').length > MAX_ID_CHARS)
      throw new InvalidArgumentError(`${field}.${k} is longer than ${MAX_ID_CHARS}`);
  }
  return {
    branchId: ref.branchId,
    service: ref.service ?? '',
    instanceId: ref.instanceId ?? '',
    address: ref.address,
    resource,
  };
}

/**
 * The branch list of one request, each checked: a branch id named twice with the same reference counts once,
 * with two different ones it is INVALID_ARGUMENT (which of them would phase 2 reach?).
 */
export function checkBranchList(refs: readonly BranchRef[] | undefined, field: string): BranchRef[] {
  const byId = new Map<string, BranchRef>();
  (refs ?? []).forEach((r, i) => {
    const ref = checkBranch(r, `${field}[${i}]`);
    const seen = byId.get(ref.branchId);
    if (!seen) return void byId.set(ref.branchId, ref);
    if (!sameRef(seen, ref)) {
      throw new InvalidArgumentError(
        `${field}[${i}]: branch id '${ref.branchId}' is named twice with different references`,
        { details: { branchId: ref.branchId } },
      );
    }
  });
  return [...byId.values()];
}

function sameRef(a: BranchRef, b: BranchRef): boolean {
  return (
    a.address === b.address &&
    a.resource === b.resource &&
    a.service === b.service &&
    a.instanceId === b.instanceId
  );
}

export function checkBranchCount(xid: string, n: number, l: ManagerLimits): void {
  if (n > l.maxBranches) {
    throw new ResourceExhaustedError(
      `transaction ${xid} would have ${n} branches: the maximum is ${l.maxBranches}`,
      {
        details: { xid, branches: n, maxBranches: l.maxBranches },
      },
    );
  }
}

/** What a staged event costs on the wire: its topic, key, value and headers, in bytes (UTF-8 for text). */
export const eventBytes = stagedEventBytes;

/**
 * Staged events by the rules the outbox relay publishes them with (events/): a legal topic, each event within
 * the envelope's size once the relay adds its headers, all of them within the transaction's `maxEventBytes`.
 * An event the relay could never publish is refused here, before the commit, never dropped after it.
 */
export function checkEvents(
  xid: string,
  events: StagedEvent[],
  already: StagedEvent[],
  l: ManagerLimits,
): void {
  const count = events.length + already.length;
  if (count > l.maxEventsPerTx) {
    throw new ResourceExhaustedError(
      `transaction ${xid} stages ${count} events: the maximum is ${l.maxEventsPerTx}`,
      {
        details: { xid, events: count, maxEventsPerTx: l.maxEventsPerTx },
      },
    );
  }
  let bytes = 0;
  let logged = 0;
  for (const e of already) {
    bytes += eventBytes(e);
    logged += loggedEventBytes(e);
  }
  events.forEach((e, i) => {
    try {
      validateTopic(e.topic);
    } catch (err) {
      throw new InvalidArgumentError(`events[${i}].topic: ${(err as Error).message}`, { details: { xid } });
    }
    const size = eventBytes(e);
    if (size + ENVELOPE_OVERHEAD_BYTES > ENVELOPE_DEFAULTS.maxEventBytes) {
      throw new ResourceExhaustedError(
        `events[${i}] of transaction ${xid} is ${size} bytes: one event may have at most ` +
          `${ENVELOPE_DEFAULTS.maxEventBytes - ENVELOPE_OVERHEAD_BYTES}`,
        { details: { xid, eventBytes: size } },
      );
    }
    bytes += size;
    logged += loggedEventBytes(e);
  });
  if (bytes > l.maxEventBytes) {
    throw new ResourceExhaustedError(
      `transaction ${xid} stages ${bytes} bytes of events: the maximum is ${l.maxEventBytes}`,
      { details: { xid, eventBytes: bytes, maxEventBytes: l.maxEventBytes } },
    );
  }
  if (logged > MAX_LOGGED_EVENT_BYTES) {
    // The decision record must fit one log write (etcd refuses requests over 1.5 MiB): a decision that can never
    // be written would hold its prepared branches until a restart.
    throw new ResourceExhaustedError(
      `transaction ${xid}'s events would take ${logged} bytes in its log record (keys and values as base64, ` +
        `headers as JSON): the maximum is ${MAX_LOGGED_EVENT_BYTES}`,
      { details: { xid, loggedBytes: logged } },
    );
  }
}
