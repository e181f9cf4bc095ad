/**
 * OpenTelemetry tracing, shared by rpc/, events/ and txapi/: DMTP writes its spans through `@opentelemetry/api`
 * only, so they go wherever the application's OpenTelemetry SDK sends its own (and nowhere, at no cost but a
 * few calls, without one). Turned on per component (rpc's tracing middleware, `tracing: true` on a subscription,
 * a producer or `createDmtp`); the trace context travels in W3C `traceparent` / `tracestate` (gRPC metadata,
 * Kafka headers) through whatever propagator the SDK registered.
 */
import { SpanStatusCode, trace, type Span, type Tracer, type TracerProvider } from '@opentelemetry/api';
import { toStatus } from './errors';

/** The instrumentation scope of every DMTP span. */
export const TRACER_NAME = 'dmtp';

/**
 * DMTP's tracer, from the global tracer provider. Kept while that provider is the same object: the API's proxy
 * tracer follows an SDK registered later by itself, and `trace.disable()` (tests) puts a new provider in place.
 * Asking the API each time made a new proxy tracer per span when no SDK is registered.
 */
export function dmtpTracer(): Tracer {
  const provider = trace.getTracerProvider();
  if (cached?.provider !== provider) cached = { provider, tracer: provider.getTracer(TRACER_NAME) };
  return cached.tracer;
}

let cached: { provider: TracerProvider; tracer: Tracer } | undefined;

/** Span attributes DMTP adds besides the semantic conventions' own. */
export const SPAN_ATTRIBUTES = {
  xid: 'dmtp.xid',
  branch: 'dmtp.branch',
  /** The registry name of the service a call went to (rpc.service is the gRPC service). */
  service: 'dmtp.service',
  /** The instance that answered a call. */
  instance: 'dmtp.instance',
  /** The caller's address, as the server's transport knows it. */
  peer: 'dmtp.peer',
  outcome: 'dmtp.outcome',
  /** How many branches a transaction's commit or rollback named, and how many events it staged. */
  branches: 'dmtp.branches',
  events: 'dmtp.events',
  /** A participant's answer to Prepare: prepared, read_only or abort. */
  vote: 'dmtp.vote',
  eventId: 'dmtp.event_id',
  attempt: 'dmtp.attempt',
} as const;

/** The `dmtp.xid` attribute of a request that names an xid (Commit, Rollback, QueryOutcome, …); none otherwise. */
export function xidAttributes(request: unknown): Record<string, string> {
  const xid = (request as { xid?: unknown } | null)?.xid;
  return typeof xid === 'string' && xid !== '' ? { [SPAN_ATTRIBUTES.xid]: xid } : {};
}

/** Ends `span` as failed by `err`: ERROR status with the error's message, the exception recorded. */
export function endSpanFailed(span: Span, err: unknown): void {
  // A gRPC status object (a grpc-js handler's error) has its text in `details`.
  const e = err as { message?: unknown; details?: unknown } | undefined;
  const message =
    typeof e?.message === 'string' ? e.message : typeof e?.details === 'string' ? e.details : String(err);
  if (err instanceof Error) span.recordException(err);
  else span.recordException(message);
  span.setStatus({ code: SpanStatusCode.ERROR, message });
  span.end();
}

/**
 * Ends `span` when `work` settles: as it is when it resolves (`onOk` may describe the value first), as failed by the
 * error when it rejects (`onError` may describe the error first). Settles as `work` does.
 */
export function endSpanWith<T>(
  span: Span,
  work: Promise<T>,
  onOk?: (value: T) => void,
  onError?: (err: unknown) => void,
): Promise<T> {
  return work.then(
    (value) => {
      onOk?.(value);
      span.end();
      return value;
    },
    (err: unknown) => {
      onError?.(err);
      endSpanFailed(span, err);
      throw err;
    },
  );
}

/** The gRPC status code a failed call ends with, as a server sends it (a non-DMTP error is INTERNAL). */
export function statusCodeOf(err: unknown): number {
  return toStatus(err).code;
}
