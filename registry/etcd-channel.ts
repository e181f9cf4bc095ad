/**
 * The gRPC channel settings of every etcd client DMTP creates (the registry's, the coordinator's): reconnects
 * backed off in seconds, not grpc-js's two minutes, and HTTP/2 keepalive. Without keepalive a connection that
 * went silent without a reset (a frozen etcd, a network that drops packets) leaves every watch quiet for good
 * and every lease keepalive unanswered, with nothing noticing: a ping that goes unanswered breaks the
 * connection, the streams fail, and etcd3 opens them again (watches from the revision they had reached).
 * Also the client's call deadline and its fault handling (which calls count against a host).
 */
import type { ChannelOptions } from '@grpc/grpc-js';
import { circuitBreaker, ConsecutiveBreaker, handleWhen, retry } from 'cockatiel';
import { GRPCResourceExhastedError, isRecoverableError, type IOptions } from 'etcd3';
import { checkTogether, readFileFromEnv } from '../common/options';
import {
  checkWholeNumber,
  InvalidArgumentError,
  MAX_TIMER_MS,
  oneLine,
  type BackoffOptions,
} from '../common';

export interface EtcdChannelOptions {
  /** An HTTP/2 ping this often while a call or stream is open (etcd's own floor: `--grpc-keepalive-min-time`, 5 s). */
  keepaliveMs?: number;
  /** A ping unanswered this long breaks the connection. */
  keepaliveTimeoutMs?: number;
  /** Reconnect backoff: first wait and ceiling (`initialMs`, `maxMs`). */
  reconnectBackoff?: Pick<BackoffOptions, 'initialMs' | 'maxMs'>;
}

/**
 * TLS and user of an etcd client: etcd3's own `credentials` (PEM contents: the CA that signed etcd's
 * certificate; this client's certificate and key for etcd's `--client-cert-auth`) and `auth` (etcd's users and
 * roles). Plaintext and no user when absent. With `credentials`, endpoints are `https://…`.
 */
export interface EtcdSecurity {
  credentials?: { rootCertificate: Buffer; privateKey?: Buffer; certChain?: Buffer };
  auth?: { username: string; password: string };
}

/**
 * `EtcdSecurity` from the environment, empty when nothing is set: DMTP_ETCD_CA, DMTP_ETCD_CERT, DMTP_ETCD_KEY
 * (PEM file paths), DMTP_ETCD_USER and DMTP_ETCD_PASSWORD. Read by the coordinator's main and the CLI.
 */
export function etcdSecurityFromEnv(env: NodeJS.ProcessEnv = process.env): EtcdSecurity {
  const [ca, cert, key] = ['DMTP_ETCD_CA', 'DMTP_ETCD_CERT', 'DMTP_ETCD_KEY'].map((n) =>
    readFileFromEnv(env, n),
  );
  checkTogether(['DMTP_ETCD_CERT', 'DMTP_ETCD_KEY'], [cert, key]);
  if (cert && !ca) {
    throw new InvalidArgumentError(
      'DMTP_ETCD_CERT needs DMTP_ETCD_CA (the CA that signed etcd’s certificate)',
      {
        details: { option: 'DMTP_ETCD_CA' },
      },
    );
  }
  const user = env.DMTP_ETCD_USER || undefined;
  checkTogether(['DMTP_ETCD_USER', 'DMTP_ETCD_PASSWORD'], [user, env.DMTP_ETCD_PASSWORD || undefined]);
  return {
    credentials: ca ? { rootCertificate: ca, certChain: cert, privateKey: key } : undefined,
    auth: user ? { username: user, password: env.DMTP_ETCD_PASSWORD! } : undefined,
  };
}

/** What of an `EtcdSecurity` may be logged: whether TLS is on, and the user name (never a key or password). */
export function describeEtcdSecurity(s: EtcdSecurity): { tls: string; user?: string } {
  const tls = !s.credentials ? 'off' : s.credentials.certChain ? 'mutual' : 'on';
  return { tls, user: s.auth?.username };
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

/**
 * etcd3's `faultHandling` policies as etcd3 builds them by default — per host a circuit breaker that opens for
 * 5 s after 3 failures in a row, and every call tried up to 3 more times — except that RESOURCE_EXHAUSTED is
 * not a failure of the host. etcd3 counts it as a recoverable one, but it means the request or the response was
 * too large (a page of big values, an oversized put), which sending it again cannot change: etcd3 sent the call
 * again until three refusals opened the breaker, and for 5 s every call of the client failed — registrations,
 * lease grants, and the smaller page that `readPrefix` asks next. Give it to an etcd client of your own with
 * `new Etcd3({ …, faultHandling: etcdFaultHandling() })`.
 */
export function etcdFaultHandling(): Pick<NonNullable<IOptions['faultHandling']>, 'host' | 'global'> {
  const hostFailure = handleWhen(
    (err) => isRecoverableError(err) && !(err instanceof GRPCResourceExhastedError),
  );
  return {
    host: () => circuitBreaker(hostFailure, { halfOpenAfter: 5_000, breaker: new ConsecutiveBreaker(3) }),
    global: retry(hostFailure, { maxAttempts: 3 }),
  };
}

/** Whether `err` is one of etcd3's errors: their class names say GRPC…, their `name` is a plain 'Error'. */
export function isEtcdError(err: unknown): boolean {
  return /^GRPC/.test((err as Error | undefined)?.constructor?.name ?? '');
}

/** The one line for an etcd that did not answer: `cannot reach etcd at <endpoints> (<its last error>)`. */
export function etcdUnreachable(err: unknown, endpoints: readonly string[]): string {
  return `cannot reach etcd at ${endpoints.join(',')} (${oneLine(err instanceof Error ? err.message : String(err))})`;
}
