/**
 * OpenTelemetry spans for events (`tracing: true` on a producer or a subscription): a PRODUCER span `send <topic>`
 * per plain publish, ended when Kafka acknowledged, whose context travels in the event's headers (`traceparent`,
 * `tracestate`); a CONSUMER span `process <topic>` per handler attempt, child of the context the event carries
 * (the publisher's span, or for a transaction's event the initiator's: txapi's `tracing`), active while the
 * handler runs. Attributes follow OpenTelemetry's messaging conventions (`messaging.system` kafka,
 * `messaging.destination.name`, `messaging.consumer.group.name`, the partition and offset) plus `dmtp.event_id`,
 * `dmtp.xid` and `dmtp.attempt`.
 */
import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  trace,
  type Span,
  type TextMapGetter,
} from '@opentelemetry/api';
import { dmtpTracer, endSpanFailed, endSpanWith, SPAN_ATTRIBUTES } from '../common/tracing';
import type { DeliveryReport } from './producer';
import type { ReceivedEvent } from './received-event';

/** A publish's span, and the headers that carry its context. */
export function startSendSpan(topic: string, id: string): { span: Span; headers: Record<string, string> } {
  const parent = context.active();
  const span = dmtpTracer().startSpan(
    `send ${topic}`,
    {
      kind: SpanKind.PRODUCER,
      attributes: {
        'messaging.system': 'kafka',
        'messaging.operation.type': 'send',
        'messaging.destination.name': topic,
        [SPAN_ATTRIBUTES.eventId]: id,
      },
    },
    parent,
  );
  const headers: Record<string, string> = {};
  propagation.inject(trace.setSpan(parent, span), headers);
  return { span, headers };
}

/** Ends a publish's span with what Kafka answered. */
export function endSendSpan(span: Span, report: DeliveryReport): void {
  if (report.status === 'sent') {
    span.setAttributes({
      'messaging.destination.partition.id': String(report.partition),
      'messaging.kafka.offset': Number(report.offset),
    });
    span.end();
  } else {
    span.setAttribute('error.type', report.reason);
    endSpanFailed(span, report.error);
  }
}

const eventGetter: TextMapGetter<ReceivedEvent> = {
  keys: (e) => Object.keys(e.message.headers ?? {}),
  get: (e, key) => e.header(key),
};

/**
 * Runs one handler attempt inside its CONSUMER span. Synchronous as far as the handler is (a handler that returns
 * no promise ends its span at once), so the subscription's synchronous first attempt stays synchronous.
 */
export function tracedAttempt(
  event: ReceivedEvent,
  group: string,
  attempt: number,
  run: () => unknown,
): unknown {
  const parent = propagation.extract(ROOT_CONTEXT, event, eventGetter);
  const span = dmtpTracer().startSpan(
    `process ${event.topic}`,
    {
      kind: SpanKind.CONSUMER,
      attributes: {
        'messaging.system': 'kafka',
        'messaging.operation.type': 'process',
        'messaging.destination.name': event.topic,
        'messaging.consumer.group.name': group,
        'messaging.destination.partition.id': String(event.partition),
        'messaging.kafka.offset': Number(event.offset),
        [SPAN_ATTRIBUTES.eventId]: event.id,
        [SPAN_ATTRIBUTES.attempt]: attempt,
      },
    },
    parent,
  );
  const xid = event.xid;
  if (xid !== undefined) span.setAttribute(SPAN_ATTRIBUTES.xid, xid);
  let res: unknown;
  try {
    res = context.with(trace.setSpan(parent, span), run);
  } catch (err) {
    endSpanFailed(span, err);
    throw err;
  }
  if (res !== null && typeof res === 'object' && typeof (res as PromiseLike<unknown>).then === 'function') {
    return endSpanWith(span, Promise.resolve(res));
  }
  span.end();
  return res;
}
