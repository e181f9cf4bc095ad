/**
 * OpenTelemetry spans for DMTP calls, one middleware on each side (`tracingClientMiddleware`,
 * `tracingServerMiddleware`), the same over plain unary and the multiplexed path. The client's span is the parent of
 * the server's: the trace context travels in the call's metadata (`traceparent`, `tracestate` with the W3C
 * propagator the SDK registers), and the handler runs inside the server's span, so its onward calls, queries and
 * events are children of it. Names and attributes follow OpenTelemetry's RPC conventions (`rpc.system` grpc,
 * `rpc.service`, `rpc.method`, `rpc.grpc.status_code`) plus `dmtp.service` (the registry name called) and
 * `dmtp.instance` (the instance that answered). Without an SDK registered, both are a few no-op calls.
 */
import type { Metadata } from '@grpc/grpc-js';
import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  trace,
  type Attributes,
  type TextMapGetter,
  type TextMapSetter,
} from '@opentelemetry/api';
import { dmtpTracer, endSpanFailed, SPAN_ATTRIBUTES, statusCodeOf } from '../common/tracing';
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
  const name = path.startsWith('/') ? path.slice(1) : path;
  const slash = name.lastIndexOf('/');
  return {
    name,
    attributes: {
      'rpc.system': 'grpc',
      'rpc.service': slash < 0 ? name : name.slice(0, slash),
      'rpc.method': slash < 0 ? name : name.slice(slash + 1),
    },
  };
}

/**
 * A CLIENT span around each call (its retries included), child of the span active where the call is made, its
 * context sent in the call's metadata. Put it first in a client's `middleware`, so the span covers the others.
 */
export function tracingClientMiddleware(): ClientMiddleware {
  return async (call, next) => {
    const { name, attributes } = rpcAttributes(call.method);
    attributes[SPAN_ATTRIBUTES.service] = call.service;
    const parent = context.active();
    const span = dmtpTracer().startSpan(name, { kind: SpanKind.CLIENT, attributes }, parent);
    const ctx = trace.setSpan(parent, span);
    propagation.inject(ctx, call.metadata, metadataSetter);
    try {
      const res = await context.with(ctx, () => next(call));
      span.setAttribute('rpc.grpc.status_code', 0);
      span.setAttribute(SPAN_ATTRIBUTES.instance, res.instanceId);
      span.end();
      return res;
    } catch (err) {
      span.setAttribute('rpc.grpc.status_code', statusCodeOf(err));
      endSpanFailed(span, err);
      throw err;
    }
  };
}

/**
 * A SERVER span around each call's handling, child of the caller's span when the call carries its context (a
 * root span otherwise), active while the handler runs. Put it first in a server's `middleware`, so the span
 * covers the others (the transaction middleware adds `dmtp.xid` and `dmtp.branch` to it).
 */
export function tracingServerMiddleware(): ServerMiddleware {
  return async (call, next) => {
    const { name, attributes } = rpcAttributes(call.method);
    if (call.peer) attributes[SPAN_ATTRIBUTES.peer] = call.peer;
    const parent = propagation.extract(ROOT_CONTEXT, call.metadata, metadataGetter);
    const span = dmtpTracer().startSpan(name, { kind: SpanKind.SERVER, attributes }, parent);
    try {
      const res = await context.with(trace.setSpan(parent, span), next);
      span.setAttribute('rpc.grpc.status_code', 0);
      span.end();
      return res;
    } catch (err) {
      span.setAttribute('rpc.grpc.status_code', statusCodeOf(err));
      endSpanFailed(span, err);
      throw err;
    }
  };
}
