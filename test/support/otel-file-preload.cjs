// Preloaded (NODE_OPTIONS=--require …) into a child process whose spans a test reads: the OpenTelemetry SDK as an
// application registers it (AsyncLocalStorage context manager, W3C propagator), its exporter writing each ended
// span as one JSON line to DMTP_TEST_SPANS_FILE.
const fs = require('node:fs');
const { context, propagation, trace } = require('@opentelemetry/api');
const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks');
const { W3CTraceContextPropagator } = require('@opentelemetry/core');
const { BasicTracerProvider, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base');

const file = process.env.DMTP_TEST_SPANS_FILE;
if (!file) throw new Error('otel-file-preload: DMTP_TEST_SPANS_FILE is not set');
const exporter = {
  export(spans, done) {
    for (const s of spans) {
      const line = {
        name: s.name,
        kind: s.kind,
        traceId: s.spanContext().traceId,
        spanId: s.spanContext().spanId,
        parentSpanId: s.parentSpanContext ? s.parentSpanContext.spanId : undefined,
        status: s.status,
        attributes: s.attributes,
      };
      fs.appendFileSync(file, JSON.stringify(line) + '\n');
    }
    done({ code: 0 });
  },
  shutdown: async () => undefined,
};
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
trace.setGlobalTracerProvider(
  new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }),
);
propagation.setGlobalPropagator(new W3CTraceContextPropagator());
