/**
 * The stored form of a TxRecord: compact JSON with bytes in base64. Both logs use it, so the memory log
 * exercises the same round trip as the etcd one and never shares objects with its callers.
 */
import { InternalError } from '../../common';
import type { StagedEvent } from '../../proto/gen/dmtp/v1/types';
import type { TxRecord } from './tx-log';

interface StoredEvent {
  t: string;
  k: string;
  v: string;
  h: Record<string, string>;
  s: number;
}

export function encodeRecord(r: TxRecord): Buffer {
  const events: StoredEvent[] = r.events.map((e) => ({
    t: e.topic,
    k: Buffer.from(e.key).toString('base64'),
    v: Buffer.from(e.value).toString('base64'),
    h: e.headers,
    s: e.sequence,
  }));
  const { onePhase, ...rest } = r;
  return Buffer.from(
    JSON.stringify(onePhase ? { v: 1, ...rest, events, onePhase } : { v: 1, ...rest, events }),
  );
}

export function decodeRecord(buf: Buffer | string): TxRecord {
  let o: Omit<TxRecord, 'events'> & { v?: number; events?: StoredEvent[] };
  try {
    o = JSON.parse(buf.toString());
  } catch (err) {
    throw new InternalError('unreadable transaction log record', { cause: err });
  }
  if (o?.v !== 1 || typeof o.xid !== 'string')
    throw new InternalError('unknown transaction log record version');
  const events: StagedEvent[] = (o.events ?? []).map((e) => ({
    topic: e.t,
    key: Buffer.from(e.k, 'base64'),
    value: Buffer.from(e.v, 'base64'),
    headers: e.h ?? {},
    sequence: e.s,
  }));
  return {
    xid: o.xid,
    state: o.state,
    branches: o.branches ?? [],
    events,
    createdAtMs: o.createdAtMs ?? 0,
    deadlineAtMs: o.deadlineAtMs ?? 0,
    decidedAtMs: o.decidedAtMs ?? 0,
    initiator: o.initiator ?? '',
    labels: o.labels ?? {},
    abortReason: o.abortReason ?? '',
    ...(o.onePhase === true ? { onePhase: true } : {}),
  };
}
