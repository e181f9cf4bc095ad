/**
 * The OpenTelemetry SDK in the test process, as an application registers it: a tracer provider exporting to
 * memory (the SDK's own InMemorySpanExporter, so the tests read the spans DMTP really produced), the
 * AsyncLocalStorage context manager, the W3C trace-context propagator. `uninstall()` puts the no-op globals back.
 */
import { context, propagation, trace, SpanKind, type SpanContext } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  InMemorySpanExporter,
  SimpleSpanProcessor,
  type ReadableSpan,
  type SpanExporter,
} from '@opentelemetry/sdk-trace-base';

export interface TestTracing {
  /** The spans ended so far, in the order they ended. */
  spans(): ReadableSpan[];
  reset(): void;
  uninstall(): Promise<void>;
}

export function installTracing(): TestTracing {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const manager = new AsyncLocalStorageContextManager().enable();
  context.setGlobalContextManager(manager);
  trace.setGlobalTracerProvider(provider);
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  return {
    spans: () => exporter.getFinishedSpans(),
    reset: () => exporter.reset(),
    // The provider is left as it is (not shut down, which empties the exporter): a test can still read what it
    // exported, and see that nothing more arrives once the globals are the no-op ones again.
    async uninstall() {
      await provider.forceFlush();
      trace.disable();
      propagation.disable();
      context.disable();
    },
  };
}

/** The one span matching, or a failure that lists what there is. */
export function oneSpan(
  spans: ReadableSpan[],
  match: { name: string; kind?: SpanKind; attributes?: Record<string, unknown> },
): ReadableSpan {
  const found = spans.filter(
    (s) =>
      s.name === match.name &&
      (match.kind === undefined || s.kind === match.kind) &&
      Object.entries(match.attributes ?? {}).every(([k, v]) => s.attributes[k] === v),
  );
  if (found.length !== 1) {
    const seen = spans.map((s) => `${s.name} (${SpanKind[s.kind]}) ${JSON.stringify(s.attributes)}`);
    throw new Error(
      `expected one span ${JSON.stringify(match)}, found ${found.length} among:\n  ${seen.join('\n  ')}`,
    );
  }
  return found[0];
}

/** Whether `child`'s parent is `parent` (same trace, parent span id). */
export function isChildOf(child: ReadableSpan, parent: { spanContext(): SpanContext }): boolean {
  const p = parent.spanContext();
  return child.spanContext().traceId === p.traceId && child.parentSpanContext?.spanId === p.spanId;
}

/**
 * The SDK as a production service registers it (a BatchSpanProcessor), its exporter counting and dropping the
 * spans: what recording every span costs, without an exporter's network in the figure (bench/rpc-registry.ts).
 */
export function installBenchTracing(): { exported(): number; uninstall(): Promise<void> } {
  let exported = 0;
  const exporter: SpanExporter = {
    export: (spans, done) => {
      exported += spans.length;
      done({ code: 0 });
    },
    shutdown: async () => undefined,
  };
  const provider = new BasicTracerProvider({ spanProcessors: [new BatchSpanProcessor(exporter)] });
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  trace.setGlobalTracerProvider(provider);
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  return {
    exported: () => exported,
    async uninstall() {
      await provider.shutdown();
      trace.disable();
      propagation.disable();
      context.disable();
    },
  };
}
