import { strict as assert } from 'node:assert';
import type { KafkaMessage } from 'kafkajs';
import { DEAD_LETTER_HEADERS, deadLetterMessage, eventBytes, HEADERS, ReceivedEvent } from '../../../events';

function received(headers: Record<string, unknown>): ReceivedEvent {
  const message = { offset: '4', key: Buffer.from('k'), value: Buffer.from('v'), timestamp: '1', headers };
  return new ReceivedEvent('orders', 1, message as unknown as KafkaMessage);
}

describe('events/dead-letter', () => {
  it('keeps the original headers as they came: bytes untouched, every value of a repeated header', () => {
    // Before, each header was decoded to UTF-8 text (binary bytes became U+FFFD) and a repeated one kept its last.
    const bin = Buffer.from([0xff, 0x00, 0xfe, 0x80]);
    const trace = [Buffer.from('hop-1'), Buffer.from('hop-2')];
    const id = Buffer.from('ev-4');
    const r = deadLetterMessage(
      received({ bin, trace, [HEADERS.id]: id }),
      'handler-failed',
      'E: no',
      'g',
      1,
      99,
    );
    assert.deepEqual(r.headers.bin, bin);
    assert.deepEqual(r.headers.trace, trace);
    assert.deepEqual(r.headers[HEADERS.id], id);
    assert.equal(r.headers[DEAD_LETTER_HEADERS.reason], 'E: no');
    assert.equal(r.headers[DEAD_LETTER_HEADERS.offset], '4');
    assert.equal(r.headers[DEAD_LETTER_HEADERS.failedAtMs], '99');
  });

  it('leaves out headers without value (null), which kafkajs cannot write', () => {
    const r = deadLetterMessage(
      received({ gone: null, some: [null, Buffer.from('a')], none: [null], type: 'T' }),
      'expired',
      'old',
      'g',
      0,
    );
    assert.equal('gone' in r.headers, false);
    assert.equal('none' in r.headers, false);
    assert.deepEqual(r.headers.some, [Buffer.from('a')]);
    assert.equal(r.headers.type, 'T');
  });

  it('counts every value of a repeated header in the size', () => {
    assert.equal(eventBytes(null, null, { ab: [Buffer.from('xyz'), 'q'] }), 2 + 3 + 2 + 1);
  });
});
