/**
 * Input checks against the manager's limits, each failing with the status the proto promises:
 * INVALID_ARGUMENT for malformed or out-of-range values, RESOURCE_EXHAUSTED for a limit on size or count.
 */
import { InvalidArgumentError, ResourceExhaustedError } from '../common';
import type { BranchRef, StagedEvent } from '../proto/gen/dmtp/v1/types';
import type { ManagerLimits } from './options';

const MAX_ID_CHARS = 256;

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

export function checkBranch(ref: BranchRef | undefined, field: string): BranchRef {
  if (!ref) throw new InvalidArgumentError(`${field} is required`);
  const must = (name: keyof BranchRef) => {
    const v = ref[name];
    if (typeof v !== 'string' || v.length === 0)
      throw new InvalidArgumentError(`${field}.${String(name)} is required`);
    if (v.length > MAX_ID_CHARS)
      throw new InvalidArgumentError(`${field}.${String(name)} is longer than ${MAX_ID_CHARS}`);
  };
  must('branchId');
  must('address');
  for (const k of ['service', 'instanceId', 'resource'] as const) {
    if ((ref[k] ?? '').length > MAX_ID_CHARS)
      throw new InvalidArgumentError(`${field}.${k} is longer than ${MAX_ID_CHARS}`);
  }
  return {
    branchId: ref.branchId,
    service: ref.service ?? '',
    instanceId: ref.instanceId ?? '',
    address: ref.address,
    resource: ref.resource ?? '',
  };
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

export function eventBytes(e: StagedEvent): number {
  let n = e.topic.length + e.key.length + e.value.length;
  for (const [k, v] of Object.entries(e.headers ?? {})) n += k.length + v.length;
  return n;
}

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
  for (const e of already) bytes += eventBytes(e);
  events.forEach((e, i) => {
    if (!e.topic || e.topic.length > 249 || !/^[A-Za-z0-9._-]+$/.test(e.topic)) {
      throw new InvalidArgumentError(`events[${i}].topic must be 1-249 characters of [A-Za-z0-9._-]`);
    }
    bytes += eventBytes(e);
  });
  if (bytes > l.maxEventBytes) {
    throw new ResourceExhaustedError(
      `transaction ${xid} stages ${bytes} bytes of events: the maximum is ${l.maxEventBytes}`,
      { details: { xid, eventBytes: bytes, maxEventBytes: l.maxEventBytes } },
    );
  }
}
