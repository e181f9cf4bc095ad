// An OpenTelemetry SDK set-up to preload into a DMTP process, as `NODE_OPTIONS="--require ./examples/otel-file.cjs"`:
// the AsyncLocalStorage context manager, the W3C trace-context propagator, and an exporter that appends each ended
// span as one JSON line to the file DMTP_SPANS_FILE names. The demo (examples/demo.ts) runs every service with it
// and DMTP_TRACING=1, then follows each placed order's trace across the processes' files; the tests read them too.
// In production, register your own exporter here instead (OTLP to a collector, say); DMTP only needs the API.
const fs = require('node:fs');
const { context, propagation, trace } = require('@opentelemetry/api');
const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks');
const { W3CTraceContextPropagator } = require('@opentelemetry/core');
const { BasicTracerProvider, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base');

const file = process.env.DMTP_SPANS_FILE;
if (!file) throw new Error('examples/otel-file.cjs: set DMTP_SPANS_FILE to the file the spans go to');
const exporter = {
  // Written at once, as each span ends: a process killed with SIGKILL loses only the spans still open.
  export(spans, done) {
    const lines = spans.map((s) =>
      JSON.stringify({
        name: s.name,
        kind: s.kind,
        traceId: s.spanContext().traceId,
        spanId: s.spanContext().spanId,
        parentSpanId: s.parentSpanContext ? s.parentSpanContext.spanId : undefined,
        status: s.status,
        attributes: s.attributes,
      }),
    );
    fs.appendFileSync(file, lines.join('\n') + '\n');
    done({ code: 0 });
  },
  shutdown: async () => undefined,
};
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
trace.setGlobalTracerProvider(
  new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }),
);
propagation.setGlobalPropagator(new W3CTraceContextPropagator());
