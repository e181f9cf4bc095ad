// common/log.ts reads DMTP_LOG_LEVEL at each write: any case of a level name works, and a value that is no level
// logs at warn and says so once on stderr (before, `INFO` or `verbose` went quietly to warn).
import { strict as assert } from 'node:assert';
import { context, trace } from '@opentelemetry/api';
import { logger } from '../../../common/log';
import { installTracing } from '../../support/tracing';

describe('common/log: DMTP_LOG_LEVEL', () => {
  const saved = process.env.DMTP_LOG_LEVEL;
  let lines: string[];
  let restore: () => void;

  beforeEach(() => {
    lines = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string | Uint8Array) => {
      lines.push(String(chunk));
      return true;
    }) as typeof process.stderr.write;
    restore = () => (process.stderr.write = write);
  });
  afterEach(() => {
    restore();
    if (saved === undefined) delete process.env.DMTP_LOG_LEVEL;
    else process.env.DMTP_LOG_LEVEL = saved;
  });

  it('takes a level in any case', () => {
    process.env.DMTP_LOG_LEVEL = 'INFO';
    logger('t').info('hello');
    assert.equal(lines.length, 1);
    assert.match(lines[0], /"level":"info".*"msg":"hello"/);
  });

  it('a value that is no level logs at warn and says so once', () => {
    process.env.DMTP_LOG_LEVEL = 'verbose';
    const log = logger('t');
    log.info('not shown');
    log.warn('shown');
    log.warn('shown again');
    assert.equal(lines.filter((l) => /DMTP_LOG_LEVEL 'verbose' is not one of/.test(l)).length, 1);
    assert.equal(lines.filter((l) => /"msg":"shown/.test(l)).length, 2);
    assert.ok(!lines.some((l) => /not shown/.test(l)));
    process.env.DMTP_LOG_LEVEL = 'constructor';
    log.warn('still warn');
    assert.ok(lines.some((l) => /DMTP_LOG_LEVEL 'constructor' is not one of/.test(l)));
  });

  it('names the recorded OpenTelemetry span a line is written in, and no other', async () => {
    process.env.DMTP_LOG_LEVEL = 'warn';
    const log = logger('t');
    const tracing = installTracing(); // the SDK in memory, as an application registers it
    try {
      const span = trace.getTracer('test').startSpan('work');
      context.with(trace.setSpan(context.active(), span), () => log.warn('inside'));
      span.end();
      // A span context that is not recorded (a caller's, sampled out) and no span at all: nothing added.
      const unsampled = trace.wrapSpanContext({
        traceId: 'c'.repeat(32),
        spanId: 'd'.repeat(16),
        traceFlags: 0,
      });
      context.with(trace.setSpan(context.active(), unsampled), () => log.warn('not recorded'));
      log.warn('outside');
      const [inside, notRecorded, outside] = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
      assert.equal(inside.trace_id, span.spanContext().traceId);
      assert.equal(inside.span_id, span.spanContext().spanId);
      for (const l of [notRecorded, outside]) {
        assert.equal(l.trace_id, undefined);
        assert.equal(l.span_id, undefined);
      }
    } finally {
      await tracing.uninstall();
    }
  });
});
