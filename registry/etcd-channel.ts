/**
 * The gRPC channel settings of every etcd client DMTP creates (the registry's, the coordinator's): reconnects
 * backed off in seconds, not grpc-js's two minutes, and HTTP/2 keepalive. Without keepalive a connection that
 * went silent without a reset (a frozen etcd, a network that drops packets) leaves every watch quiet for good
 * and every lease keepalive unanswered, with nothing noticing: a ping that goes unanswered breaks the
 * connection, the streams fail, and etcd3 opens them again (watches from the revision they had reached).
 */
import type { ChannelOptions } from '@grpc/grpc-js';
import type { IOptions } from 'etcd3';
import { checkWholeNumber, MAX_TIMER_MS, type BackoffOptions } from '../common';

export interface EtcdChannelOptions {
  /** An HTTP/2 ping this often while a call or stream is open (etcd's own floor: `--grpc-keepalive-min-time`, 5 s). */
  keepaliveMs?: number;
  /** A ping unanswered this long breaks the connection. */
  keepaliveTimeoutMs?: number;
  /** Reconnect backoff: first wait and ceiling (`initialMs`, `maxMs`). */
  reconnectBackoff?: Pick<BackoffOptions, 'initialMs' | 'maxMs'>;
}

export const ETCD_CHANNEL_DEFAULTS = Object.freeze({
  keepaliveMs: 20_000,
  keepaliveTimeoutMs: 10_000,
  reconnectBackoff: Object.freeze({ initialMs: 100, maxMs: 2_000 }),
});

/** grpc-js channel options for an etcd client (etcd3's `grpcOptions`). */
export function etcdChannelOptions(o: EtcdChannelOptions = {}): ChannelOptions {
  const keepaliveMs = o.keepaliveMs ?? ETCD_CHANNEL_DEFAULTS.keepaliveMs;
  const keepaliveTimeoutMs = o.keepaliveTimeoutMs ?? ETCD_CHANNEL_DEFAULTS.keepaliveTimeoutMs;
  checkWholeNumber('etcd client', 'keepaliveMs', keepaliveMs, 1, MAX_TIMER_MS);
  checkWholeNumber('etcd client', 'keepaliveTimeoutMs', keepaliveTimeoutMs, 1, MAX_TIMER_MS);
  const backoff = o.reconnectBackoff ?? ETCD_CHANNEL_DEFAULTS.reconnectBackoff;
  return {
    'grpc.keepalive_time_ms': keepaliveMs,
    'grpc.keepalive_timeout_ms': keepaliveTimeoutMs,
    'grpc.initial_reconnect_backoff_ms': backoff.initialMs,
    'grpc.max_reconnect_backoff_ms': backoff.maxMs,
  };
}

/**
 * etcd3's `defaultCallOptions`: a deadline on every unary call (streams — watches, lease keepalives — have none).
 * Without one a call to an etcd that takes the connection but never answers (a stopped process, a frozen host)
 * waits for good: a lease grant at a coordinator's start, a read, a revoke at its stop.
 */
export function etcdCallDeadline(timeoutMs: number): NonNullable<IOptions['defaultCallOptions']> {
  checkWholeNumber('etcd client', 'call timeout', timeoutMs, 1, MAX_TIMER_MS);
  return (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeoutMs });
}
