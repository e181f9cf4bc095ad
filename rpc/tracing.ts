/**
 * OpenTelemetry spans for DMTP calls, one middleware on each side (`tracingClientMiddleware`,
 * `tracingServerMiddleware`), the same over plain unary and the multiplexed path. The client's span is the parent of
 * the server's: the trace context travels in the call's metadata (`traceparent`, `tracestate` with the W3C
 * propagator the SDK registers), and the handler runs inside the server's span, so its onward calls, queries and
 * events are children of it. Names and attributes follow OpenTelemetry's RPC conventions (`rpc.system` grpc,
 * `rpc.service`, `rpc.method`, `rpc.grpc.status_code`) plus `dmtp.service` (the registry name called) and
 * `dmtp.instance` (the instance that answered). Without an SDK registered, both are a few no-op calls.
 *
 * `clientSpan` and `serverSpan` are the same spans for DMTP's own calls that do not go through a client or a
 * server of rpc's (the coordinator's service and its calls to participants, the initiator's Commit).
 */
import type {
  Metadata,
  sendUnaryData,
  ServerUnaryCall,
  ServiceDefinition,
  UntypedServiceImplementation,
} from '@grpc/grpc-js';
import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  trace,
  type Attributes,
  type Span,
  type TextMapGetter,
  type TextMapSetter,
} from '@opentelemetry/api';
import { dmtpTracer, endSpanWith, SPAN_ATTRIBUTES, statusCodeOf } from '../common/tracing';
import type { ClientMiddleware, ServerMiddleware } from './middleware';

const metadataSetter: TextMapSetter<Metadata> = {
  set: (md, key, value) => md.set(key, value),
};

const metadataGetter: TextMapGetter<Metadata> = {
  keys: (md) => Object.keys(md.getMap()),
  get: (md, key) => {
    const values = md.get(key);
    if (values.length === 0) return undefined;
    return values.length === 1 ? String(values[0]) : values.map(String);
  },
};

/** The span name and RPC attributes of a method path, "/pkg.Service/Method" → "pkg.Service/Method". */
function rpcAttributes(path: string): { name: string; attributes: Attributes } {
  let known = byPath.get(path);
  if (known === undefined) {
    const name = path.startsWith('/') ? path.slice(1) : path;
    const slash = name.lastIndexOf('/');
    known = {
      name,
      attributes: {
        'rpc.system': 'grpc',
        'rpc.service': slash < 0 ? name : name.slice(0, slash),
        'rpc.method': slash < 0 ? name : name.slice(slash + 1),
      },
    };
    // Paths come from service definitions (a server's middleware sees only methods it serves): a few per process.
    if (byPath.size < MAX_CACHED_PATHS) byPath.set(path, known);
  }
  return { name: known.name, attributes: { ...known.attributes } };
}

const byPath = new Map<string, { name: string; attributes: Attributes }>();
const MAX_CACHED_PATHS = 1_000;

/** Ends a call's span: OK with status 0, or failed with the error's gRPC status. */
function settle<T>(span: Span, run: Promise<T>, onOk?: (res: T) => void): Promise<T> {
  return endSpanWith(
    span,
    run,
    (res) => {
      span.setAttribute('rpc.grpc.status_code', 0);
      onOk?.(res);
    },
    (err) => span.setAttribute('rpc.grpc.status_code', statusCodeOf(err)),
  );
}

/**
 * Runs `call` inside a CLIENT span for `method`, child of the active context, the span's context put in
 * `metadata` first. `onOk` may add attributes from the answer.
 */
export function clientSpan<T>(
  method: string,
  metadata: Metadata,
  extra: Attributes,
  call: () => Promise<T>,
  onOk?: (res: T, span: Span) => void,
): Promise<T> {
  const { name, attributes } = rpcAttributes(method);
  const parent = context.active();
  const span = dmtpTracer().startSpan(
    name,
    { kind: SpanKind.CLIENT, attributes: { ...attributes, ...extra } },
    parent,
  );
  const ctx = trace.setSpan(parent, span);
  propagation.inject(ctx, metadata, metadataSetter); // also unsampled: the callee keeps the caller's decision
  // Not recorded (no SDK, or sampled out): nothing to end or describe, so no promise of its own either.
  if (!span.isRecording()) return context.with(ctx, call);
  return settle(span, context.with(ctx, call), onOk && ((res) => onOk(res, span)));
}

/**
 * Runs `handle` inside a SERVER span for `method`, child of the context `metadata` carries (a root span when it
 * carries none).
 */
export function serverSpan<T>(
  method: string,
  metadata: Metadata,
  peer: string,
  handle: () => Promise<T>,
): Promise<T> {
  const { name, attributes } = rpcAttributes(method);
  if (peer) attributes[SPAN_ATTRIBUTES.peer] = peer;
  const parent = propagation.extract(ROOT_CONTEXT, metadata, metadataGetter);
  const span = dmtpTracer().startSpan(name, { kind: SpanKind.SERVER, attributes }, parent);
  const ctx = trace.setSpan(parent, span);
  return span.isRecording() ? settle(span, context.with(ctx, handle)) : context.with(ctx, handle);
}

/**
 * A CLIENT span around each call (its retries included), child of the span active where the call is made, its
 * context sent in the call's metadata. Put it first in a client's `middleware`, so the span covers the others.
 */
export function tracingClientMiddleware(): ClientMiddleware {
  return (call, next) =>
    clientSpan(
      call.method,
      call.metadata,
      { [SPAN_ATTRIBUTES.service]: call.service },
      () => next(call),
      (res, span) => span.setAttribute(SPAN_ATTRIBUTES.instance, res.instanceId),
    );
}

/**
 * A SERVER span around each call's handling, child of the caller's span when the call carries its context (a
 * root span otherwise), active while the handler runs. Put it first in a server's `middleware`, so the span
 * covers the others (the transaction middleware adds `dmtp.xid` and `dmtp.branch` to it).
 */
export function tracingServerMiddleware(): ServerMiddleware {
  return (call, next) => serverSpan(call.method, call.metadata, call.peer, next);
}

type UnaryImpl = (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => void;

/**
 * A plain grpc-js service implementation whose unary methods each run in a SERVER span (the same as
 * `tracingServerMiddleware`'s), for services served without rpc's server: `server.addService(def,
 * traceUnaryService(def, impl))`. Streaming methods are passed through untraced.
 */
export function traceUnaryService<T extends UntypedServiceImplementation>(
  definition: ServiceDefinition,
  impl: T,
): T {
  const traced: UntypedServiceImplementation = { ...impl };
  for (const [name, def] of Object.entries(definition)) {
    const handler = impl[name] as UnaryImpl | undefined;
    if (def.requestStream || def.responseStream || typeof handler !== 'function') continue;
    traced[name] = ((call, callback) => {
      // The handler's whole answer (its trailers and flags too) goes on to grpc-js once the span has ended.
      type Answer = Parameters<sendUnaryData<unknown>>;
      void serverSpan(
        def.path,
        call.metadata,
        call.getPeer(),
        () =>
          new Promise<Answer>((resolve, reject) =>
            handler(call, (...answer: Answer) => (answer[0] ? reject(answer[0]) : resolve(answer))),
          ),
      ).then(
        (answer) => callback(...answer),
        (err: Answer[0]) => callback(err),
      );
    }) as UnaryImpl;
  }
  return traced as T;
}
