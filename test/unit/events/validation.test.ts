import { strict as assert } from 'node:assert';
import {
  compileFilter,
  EventTooLargeError,
  eventBytes,
  InvalidTopicError,
  MAX_TOPIC_LENGTH,
  ReceivedEvent,
  validateSize,
  validateTopic,
} from '../../../events';

describe('events/validation', () => {
  it('accepts the topic names Kafka accepts', () => {
    for (const t of ['orders', 'a.b_c-D9', 'x'.repeat(MAX_TOPIC_LENGTH), '...']) validateTopic(t);
  });

  it('refuses empty, reserved, too long and illegal topic names with InvalidTopicError', () => {
    for (const t of ['', '.', '..', 'x'.repeat(MAX_TOPIC_LENGTH + 1), 'a b', 'a/b', 'ü', 7 as unknown]) {
      assert.throws(
        () => validateTopic(t),
        (e: unknown) =>
          e instanceof InvalidTopicError && e.details.reason === 'invalid-topic' && !e.retriable,
        `topic ${JSON.stringify(t)}`,
      );
    }
  });

  it('counts key, value and headers and refuses what is over the limit', () => {
    assert.equal(eventBytes(Buffer.from('ab'), Buffer.from('cde'), { h: 'ü' }), 2 + 3 + 1 + 2);
    validateSize('t', 100, 100);
    assert.throws(
      () => validateSize('t', 101, 100),
      (e: unknown) => e instanceof EventTooLargeError && e.details.bytes === 101 && e.reason === 'too-large',
    );
  });
});

describe('events/filter', () => {
  const event = (headers: Record<string, string>) =>
    new ReceivedEvent('t', 0, {
      key: null,
      value: null,
      timestamp: '0',
      attributes: 0,
      offset: '0',
      headers: Object.fromEntries(Object.entries(headers).map(([k, v]) => [k, Buffer.from(v)])),
    });

  it('matches on every named header, one of several values, or a predicate', () => {
    const f = compileFilter({ headers: { type: 'OrderPlaced', region: ['eu', 'us'] } })!;
    assert.equal(f(event({ type: 'OrderPlaced', region: 'eu' })), true);
    assert.equal(f(event({ type: 'OrderPlaced', region: 'ap' })), false);
    assert.equal(f(event({ type: 'OrderPlaced' })), false);
    const p = compileFilter((e) => e.header('type')?.startsWith('Order') === true)!;
    assert.equal(p(event({ type: 'OrderShipped' })), true);
    assert.equal(p(event({ type: 'Refund' })), false);
    assert.equal(compileFilter(undefined), undefined);
  });

  it('refuses a malformed filter with INVALID_ARGUMENT, not a TypeError', () => {
    for (const bad of [{ type: 'X' }, { headers: { type: 5 } }, { headers: { type: ['a', 1] } }, null]) {
      assert.throws(
        () => compileFilter(bad as never),
        (e: Error & { code?: number }) => e.code === 3 && /subscribe: filter/.test(e.message),
      );
    }
  });
});
