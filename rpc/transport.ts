/**
 * A transport carries serialized unary calls to ONE provider instance. The client helper picks an instance per
 * call (strategies) and hands the call to that instance's transport: plain grpc-js unary (`transport-unary.ts`)
 * or the multiplexed stream path (`mux/`), chosen by what the instance advertises in the registry.
 */
import type { Metadata } from '@grpc/grpc-js';

/**
 * The largest message (request or response) a DMTP call carries on either transport: the unary client's and the
 * rpc server's grpc-js receive limit, and the mux server's response limit, so a call that succeeds as unary
 * succeeds on the multiplexed path too.
 */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

export interface TransportCall {
  /** Full method path, e.g. "/dmtp.v1.Participant/Prepare". */
  method: string;
  /** Serialized request message. */
  request: Buffer;
  metadata: Metadata;
  /** Absolute deadline in ms since the Unix epoch (Infinity = none). */
  deadline: number;
  /** Aborting it cancels the call (the outcome is then a CANCELLED error). */
  signal?: AbortSignal;
}

export interface TransportResult {
  /** Serialized response message. */
  response: Buffer;
  /** Response trailers (e.g. the `dmtp-branch` report of a participant). */
  trailers: Metadata;
}

/**
 * Failures reject with a `DmtpError` from `common/errors` (via `fromStatus`), whose `details` include
 * `address` and, when the request certainly never reached the server (not connected, queued and never
 * written), `notSent: true` — the retry policy retries those for any call, others only for idempotent calls.
 */
export interface Transport {
  readonly kind: 'unary' | 'mux';
  readonly address: string;
  /** Calls started and not yet settled (for least-outstanding strategies). */
  readonly inFlight: number;
  invoke(call: TransportCall): Promise<TransportResult>;
  /** Fails calls still in flight with UNAVAILABLE (notSent where true) and releases the connection. */
  close(): void;
}

/**
 * The trailers of a failed call's answer (the status a handler failed with may carry some, e.g. a participant's
 * report of branches its failed handler touched), when the server sent any.
 */
export function errorTrailers(err: unknown): Metadata | undefined {
  return (err as { trailers?: Metadata } | undefined)?.trailers;
}

/** Attaches the trailers of a failed call's answer to its error (read with `errorTrailers`). */
export function withTrailers<E extends object>(err: E, trailers: Metadata): E {
  (err as { trailers?: Metadata }).trailers = trailers;
  return err;
}
