import { strict as assert } from 'node:assert';
import type { KafkaMessage } from 'kafkajs';
import { HEADERS, ReceivedEvent } from '../../../events';

/** A record as kafkajs decodes it; Kafka allows a header without value, which kafkajs hands over as null. */
function received(headers: Record<string, unknown>): ReceivedEvent {
  const message = { offset: '7', key: null, value: Buffer.from('{}'), timestamp: '1', headers };
  return new ReceivedEvent('orders', 2, message as unknown as KafkaMessage);
}

describe('events/received-event', () => {
  it('reads a header without value (null) as absent instead of throwing', () => {
    // Before, null.toString() threw from event.id, event.headers or event.header(): the consumer crashed for good.
    const e = received({ [HEADERS.id]: null, 'x-app': null, 'x-list': [Buffer.from('a'), null], type: 'T' });
    assert.equal(e.header('x-app'), undefined);
    assert.equal(e.header('x-list'), undefined, 'the last of a repeated header, null: absent');
    assert.equal(e.id, 'orders:2:7', 'no usable id: the record coordinates');
    assert.deepEqual(e.headers, { type: 'T' });
  });

  it('reads the last value of a repeated header', () => {
    const e = received({ type: [Buffer.from('a'), null, Buffer.from('b')] });
    assert.equal(e.header('type'), 'b');
    assert.deepEqual(e.headers, { type: 'b' });
  });
});
