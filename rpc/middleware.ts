/**
 * DMTP's own interceptors, one shape on each side, run the same way whether a call arrived as plain unary or
 * over the multiplexed stream: so the transaction context, tracing and auth see the same call either way.
 */
import type { Metadata } from '@grpc/grpc-js';
import { InternalError, ResourceExhaustedError } from '../common/errors';

/** A call as a server handler and server middleware see it. */
export interface IncomingCall<Req = unknown> {
  /** Full method path, e.g. "/shop.Inventory/Reserve". */
  method: string;
  request: Req;
  metadata: Metadata;
  /** Absolute deadline in ms since the Unix epoch (Infinity = none). Nested calls inherit what is left. */
  deadline: number;
  /** Response trailers: handlers and middleware may add to them (e.g. `dmtp-branch`). */
  trailers: Metadata;
  /** Aborted when the caller cancels or the deadline passes. */
  signal: AbortSignal;
  /** The caller's address, as the transport knows it. */
  peer: string;
}

/** An ordinary unary handler: written once, served over both unary and the multiplexed path. */
export type UnaryHandler<Req = unknown, Res = unknown> = (call: IncomingCall<Req>) => Promise<Res> | Res;

/**
 * Server middleware, around the handler. The response `next()` resolves to is already encoded (see
 * `invokeHandler`): a middleware that changes the answer returns another object, which is encoded again, rather
 * than changing the handler's.
 */
export type ServerMiddleware = (call: IncomingCall, next: () => Promise<unknown>) => Promise<unknown>;

/** A call as client middleware sees it, before an instance is picked. */
export interface OutgoingCall<Req = unknown> {
  /** Registry name of the service called. */
  service: string;
  method: string;
  request: Req;
  metadata: Metadata;
  /** Absolute deadline in ms since the Unix epoch. */
  deadline: number;
  /** Safe to retry after it may have reached a server. */
  idempotent: boolean;
  /** Key for the consistent-hash strategy (e.g. an order id). */
  key?: string;
}

export interface CallResult<Res = unknown> {
  response: Res;
  trailers: Metadata;
  /** The instance that answered. */
  instanceId: string;
}

export type ClientMiddleware = (
  call: OutgoingCall,
  next: (call: OutgoingCall) => Promise<CallResult>,
) => Promise<CallResult>;

/** Runs `mws` around `last`, outermost first. */
export function composeServer(mws: ServerMiddleware[], call: IncomingCall, last: () => Promise<unknown>) {
  const run = (i: number): Promise<unknown> => (i === mws.length ? last() : mws[i](call, () => run(i + 1)));
  return run(0);
}

export function composeClient(
  mws: ClientMiddleware[],
  call: OutgoingCall,
  last: (call: OutgoingCall) => Promise<CallResult>,
): Promise<CallResult> {
  const run = (i: number, c: OutgoingCall): Promise<CallResult> =>
    i === mws.length ? last(c) : mws[i](c, (next) => run(i + 1, next));
  return run(0, call);
}

/**
 * One method a DMTP server serves, as both the unary adapter and the multiplexed dispatcher see it: the same
 * (de)serializers and the same handler, so service code is written once.
 */
export interface MethodEntry<Req = unknown, Res = unknown> {
  /** Full method path, e.g. "/dmtp.v1.Participant/Prepare". */
  path: string;
  deserialize(bytes: Buffer): Req;
  serialize(value: Res): Buffer;
  handler: UnaryHandler<Req, Res>;
  /**
   * Runs even when the server is at its `maxConcurrentCalls` (it is counted all the same): for calls that finish
   * work already admitted, e.g. a participant's Prepare, Commit and Rollback.
   */
  unlimited?: boolean;
}

export type MethodLookup = (path: string) => MethodEntry | undefined;

/**
 * Where `invokeHandler` leaves the handler's response encoded, for the transport to send without encoding it again.
 * The transports keep it on their per-call object, so it costs no allocation.
 */
export interface ResponseSlot {
  /** The response `encodedBytes` are of: the handler's own (a middleware may answer another). */
  encodedResponse: unknown;
  encodedBytes: Buffer | undefined;
  /** The largest response the transport can send (Infinity: no limit of its own). */
  readonly maxResponseBytes: number;
}

/**
 * Runs a handler inside the server middleware chain; both transports call exactly this. The response is encoded
 * at the innermost step, right after the handler returns: a response that cannot be encoded (a field missing, a
 * wrong type) or is above the transport's limit fails inside the chain, as if the handler had thrown. Encoded
 * after the chain returned, such a failure reached the caller while the middleware had seen a success — and the
 * transaction middleware kept the call's work in its branch, locks held until the transaction's deadline.
 */
export function invokeHandler(
  entry: MethodEntry,
  call: IncomingCall,
  mws: ServerMiddleware[],
  slot?: ResponseSlot,
): Promise<unknown> {
  return composeServer(mws, call, () => handleAndEncode(entry, call, slot));
}

async function handleAndEncode(entry: MethodEntry, call: IncomingCall, slot: ResponseSlot | undefined) {
  let res = entry.handler(call);
  // Awaited only when it is a promise: a synchronous handler's answer costs no extra promise or turn.
  if (typeof (res as PromiseLike<unknown> | undefined)?.then === 'function') res = await res;
  const bytes = encodeResponse(entry, res, slot?.maxResponseBytes ?? Infinity);
  if (slot !== undefined) {
    slot.encodedResponse = res;
    slot.encodedBytes = bytes;
  }
  return res;
}

/**
 * The bytes a transport sends for `res`, the chain's answer: those encoded inside the chain when it is the
 * handler's response, else (a middleware answered another) `res` encoded now. Throws as the chain's encoding does.
 */
export function responseBytes(entry: MethodEntry, slot: ResponseSlot, res: unknown): Buffer {
  if (slot.encodedBytes !== undefined && slot.encodedResponse === res) return slot.encodedBytes;
  return encodeResponse(entry, res, slot.maxResponseBytes);
}

function encodeResponse(entry: MethodEntry, res: unknown, maxBytes: number): Buffer {
  let bytes: Buffer;
  try {
    bytes = entry.serialize(res);
  } catch (err) {
    throw new InternalError(
      `${entry.path}: the handler's response cannot be encoded: ${(err as Error)?.message ?? String(err)}`,
      { details: { method: entry.path }, cause: err },
    );
  }
  if (bytes.length > maxBytes) {
    throw new ResourceExhaustedError(`response of ${bytes.length} bytes is above the ${maxBytes} limit`, {
      details: { method: entry.path },
    });
  }
  return bytes;
}
