/** Options of both ends of the multiplexed call path, with readable defaults (units in the names). */
import type { BackoffOptions } from '../../common/backoff';
import type { Clock } from '../../common/clock';
import { MAX_MESSAGE_BYTES, type Transport } from '../transport';

export const DEFAULTS = {
  /** Client: calls written on one stream and not yet answered; more wait in the queue. */
  maxInFlightPerStream: 512,
  /** Client: calls waiting for a slot on the stream; beyond this a call fails RESOURCE_EXHAUSTED (notSent). */
  maxQueuedCalls: 10_000,
  /** Client: requests above this go as plain unary (through `fallback`) so they cannot hold up small ones. */
  largePayloadBytes: 64 * 1024,
  /** Both: a batch above this is split across several stream messages (grpc-js refuses messages > 4 MiB). */
  maxBatchBytes: 1024 * 1024,
  /** Client: how long a new stream may take to be accepted (server headers) before it counts as failed. */
  streamReadyTimeoutMs: 10_000,
  /**
   * Client: HTTP/2 keepalive while the stream is open — a ping this often, and the connection counts as dead when
   * one is not answered within `keepaliveTimeoutMs`. Without it a peer that froze or a network that dropped the
   * connection silently (no reset) left the stream "up": every call waited out its deadline, none counted as a
   * failure, and the instance was never left out.
   */
  keepaliveMs: 20_000,
  keepaliveTimeoutMs: 10_000,
  /** Client: delay before reopening a failed stream; calls meanwhile fail fast with UNAVAILABLE (notSent). */
  reconnectBackoff: { initialMs: 100, maxMs: 5_000, multiplier: 2 } as BackoffOptions,
  /** Server: calls being handled per stream; beyond this a request is answered RESOURCE_EXHAUSTED. */
  serverMaxInFlightPerStream: 1024,
  /** Server: a request frame whose payload is above this is answered RESOURCE_EXHAUSTED. */
  maxRequestBytes: 4 * 1024 * 1024 - 64 * 1024,
  /**
   * Server: a response above this is answered RESOURCE_EXHAUSTED instead. The unary path's limit: the client reads
   * stream messages of any size, so a response a unary call would deliver is delivered here too.
   */
  maxResponseBytes: MAX_MESSAGE_BYTES,
} as const;

export interface MuxTransportOptions {
  /** "host:port" of the instance. */
  address: string;
  /** Carries calls whose request is above `largePayloadBytes` (normally the instance's unary transport). */
  fallback?: Transport;
  credentials?: import('@grpc/grpc-js').ChannelCredentials;
  /** TLS to the instance (plaintext without); `credentials`, when given, wins. */
  tls?: import('../tls').TlsOptions;
  /** Extra grpc-js channel options. */
  channelOptions?: import('@grpc/grpc-js').ChannelOptions;
  maxInFlightPerStream?: number;
  maxQueuedCalls?: number;
  largePayloadBytes?: number;
  maxBatchBytes?: number;
  streamReadyTimeoutMs?: number;
  keepaliveMs?: number;
  keepaliveTimeoutMs?: number;
  reconnectBackoff?: BackoffOptions;
  clock?: Clock;
}

export interface MuxServiceOptions {
  /** Calls being handled per stream; beyond this a request is answered RESOURCE_EXHAUSTED. */
  maxInFlightPerStream?: number;
  maxRequestBytes?: number;
  maxResponseBytes?: number;
  maxBatchBytes?: number;
  clock?: Clock;
}
