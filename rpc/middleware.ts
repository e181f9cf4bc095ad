/**
 * DMTP's own interceptors, one shape on each side, run the same way whether a call arrived as plain unary or
 * over the multiplexed stream: so the transaction context, tracing and auth see the same call either way.
 */
import type { Metadata } from '@grpc/grpc-js';

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
}

export type MethodLookup = (path: string) => MethodEntry | undefined;

/** Runs a handler inside the server middleware chain; both transports call exactly this. */
export function invokeHandler(
  entry: MethodEntry,
  call: IncomingCall,
  mws: ServerMiddleware[],
): Promise<unknown> {
  return composeServer(mws, call, async () => entry.handler(call));
}
