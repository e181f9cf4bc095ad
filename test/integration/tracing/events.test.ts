/**
 * OpenTelemetry spans of events (`tracing: true` on a producer and a subscription), read from the SDK's in-memory
 * exporter, through the real Kafka: the publish's PRODUCER span is the parent of every handler attempt's CONSUMER
 * span (the context travels in the event's headers), the handler runs inside its attempt's span, a failed attempt's
 * span is an error; an event without context starts a new trace; a subscription without `tracing` makes no span.
 */
import { strict as assert } from 'node:assert';
import { context, SpanKind, SpanStatusCode, trace, type SpanContext } from '@opentelemetry/api';
import { InvalidArgumentError } from '../../../common';
import { EventProducer, subscribe } from '../../../events';
import { CLIENT, EventsKit, waitFor } from '../../support/events-kit';
import { installTracing, isChildOf, oneSpan, type TestTracing } from '../../support/tracing';

describe('tracing events (OpenTelemetry SDK in memory, real Kafka)', function () {
  this.timeout(60_000);
  let kit: EventsKit;
  let tracing: TestTracing;

  beforeEach(function () {
    kit = new EventsKit(this);
    tracing = installTracing();
  });
  afterEach(async () => {
    await kit.close();
    await tracing.uninstall();
  });

  it('links the publish to each handler attempt, the handler inside its span, a failed attempt an error', async () => {
    const topic = await kit.topic();
    const producer = kit.producer({ tracing: true });
    const inHandler: { attempt: number; span?: SpanContext }[] = [];
    const sub = await kit.subscribe({
      topics: [topic],
      group: kit.group(),
      tracing: true,
      retries: 2,
      handler: (_e, { attempt }) => {
        inHandler.push({ attempt, span: trace.getActiveSpan()?.spanContext() });
        if (attempt === 1) throw new Error('first attempt fails');
      },
    });
    await sub.joined();
    const root = trace.getTracer('test').startSpan('test-root');
    const report = await context.with(trace.setSpan(context.active(), root), () =>
      producer.publish(topic, { key: 'k', value: { n: 1 }, id: 'ev-traced' }),
    );
    root.end();
    assert.equal(report.status, 'sent');
    await waitFor('the second attempt to succeed', () => sub.stats.handled === 1);

    const spans = tracing.spans();
    const send = oneSpan(spans, { name: `send ${topic}`, kind: SpanKind.PRODUCER });
    assert.ok(isChildOf(send, root), 'the publish is a child of the span active where it was made');
    assert.equal(send.attributes['messaging.system'], 'kafka');
    assert.equal(send.attributes['messaging.destination.name'], topic);
    assert.equal(send.attributes['messaging.destination.partition.id'], '0');
    assert.equal(
      send.attributes['messaging.kafka.offset'],
      Number(report.status === 'sent' && report.offset),
    );
    assert.equal(send.attributes['dmtp.event_id'], 'ev-traced');
    const attempts = [1, 2].map((attempt) =>
      oneSpan(spans, {
        name: `process ${topic}`,
        kind: SpanKind.CONSUMER,
        attributes: { 'dmtp.attempt': attempt },
      }),
    );
    for (const [i, span] of attempts.entries()) {
      assert.ok(isChildOf(span, send), `attempt ${i + 1} is a child of the publish`);
      assert.equal(span.attributes['messaging.consumer.group.name'], sub.group);
      assert.equal(span.attributes['dmtp.event_id'], 'ev-traced');
      assert.equal(span.attributes['messaging.kafka.offset'], send.attributes['messaging.kafka.offset']);
      assert.deepEqual(
        inHandler[i].span,
        span.spanContext(),
        `attempt ${i + 1}'s handler runs inside its span`,
      );
    }
    assert.equal(attempts[0].status.code, SpanStatusCode.ERROR);
    assert.equal(attempts[0].status.message, 'first attempt fails');
    assert.equal(attempts[1].status.code, SpanStatusCode.UNSET);
  });

  it('starts a new trace for an event without context; a subscription without tracing makes no span', async () => {
    const topic = await kit.topic();
    const seen: (SpanContext | undefined)[] = [];
    const traced = await kit.subscribe({
      topics: [topic],
      group: kit.group(),
      tracing: true,
      handler: () => void seen.push(trace.getActiveSpan()?.spanContext()),
    });
    const plain = await kit.subscribe({
      topics: [topic],
      group: kit.group(),
      handler: () => void seen.push(trace.getActiveSpan()?.spanContext()),
    });
    await Promise.all([traced.joined(), plain.joined()]);
    const report = await kit.producer().publish(topic, { value: 'untraced publisher' });
    assert.equal(report.status, 'sent');
    await waitFor('both groups to handle it', () => traced.stats.handled === 1 && plain.stats.handled === 1);
    const spans = tracing.spans();
    assert.equal(spans.length, 1, `one span: ${spans.map((s) => s.name).join(', ')}`);
    const process = oneSpan(spans, { name: `process ${topic}`, kind: SpanKind.CONSUMER });
    assert.equal(process.parentSpanContext, undefined, 'a root span');
    assert.equal(process.attributes['messaging.consumer.group.name'], traced.group);
    assert.deepEqual(
      seen.filter((s) => s !== undefined),
      [process.spanContext()],
      'only the traced group’s handler ran inside a span',
    );
  });

  it('ends a refused publish’s span as an error with the reason; one refused for its topic has no span', async () => {
    const topic = await kit.topic();
    const producer = kit.producer({ tracing: true });
    const refused = await producer.publish(topic, { value: 10n }); // JSON cannot take a BigInt
    assert.equal(refused.status, 'failed');
    const span = oneSpan(tracing.spans(), { name: `send ${topic}`, kind: SpanKind.PRODUCER });
    assert.equal(span.status.code, SpanStatusCode.ERROR);
    assert.equal(span.attributes['error.type'], refused.status === 'failed' && refused.reason);
    const badTopic = await producer.publish('no spaces allowed', { value: 1 });
    assert.equal(badTopic.status, 'failed');
    assert.equal(tracing.spans().length, 1, 'no span for a topic that cannot be');
  });

  it('refuses a tracing option that is not a boolean', async () => {
    assert.throws(
      () => new EventProducer({ ...CLIENT, tracing: 'yes' as unknown as boolean }),
      (err: Error) =>
        err instanceof InvalidArgumentError && /tracing must be true or false/.test(err.message),
    );
    await assert.rejects(
      subscribe({
        ...CLIENT,
        topics: ['t'],
        group: 'g',
        handler: () => undefined,
        tracing: 1 as unknown as boolean,
      }),
      (err: Error) =>
        err instanceof InvalidArgumentError && /tracing must be true or false/.test(err.message),
    );
  });
});
