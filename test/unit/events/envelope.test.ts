import { strict as assert } from 'node:assert';
import {
  checkEvent,
  checkHeaders,
  CONTENT_TYPES,
  decodeValue,
  encodeKey,
  encodeValue,
  HEADERS,
  NotSerialisableError,
  randomEventId,
  ReceivedEvent,
  stageEvent,
  stagedEventId,
} from '../../../events';

describe('events/envelope', () => {
  it('names a staged event <xid>:<sequence> and a plain one with a fresh random id', () => {
    assert.equal(stagedEventId('c1:lz:ab', 3), 'c1:lz:ab:3');
    const a = randomEventId();
    assert.match(a, /^[0-9a-f-]{36}$/);
    assert.notEqual(a, randomEventId());
  });

  it('encodes values as JSON and lets bytes through untouched', () => {
    const json = encodeValue({ order: 7, items: ['a'] });
    assert.equal(json.contentType, CONTENT_TYPES.json);
    assert.deepEqual(decodeValue(json.bytes, json.contentType), { order: 7, items: ['a'] });
    const raw = Buffer.from([0, 1, 255]);
    const bytes = encodeValue(raw);
    assert.equal(bytes.contentType, CONTENT_TYPES.bytes);
    assert.equal(bytes.bytes, raw);
    assert.deepEqual(decodeValue(bytes.bytes, bytes.contentType), raw);
    assert.deepEqual(encodeValue(new Uint8Array([4, 5])).bytes, Buffer.from([4, 5]));
    assert.equal(decodeValue(Buffer.from('"x"'), undefined)?.toString(), '"x"', 'no content type: bytes');
  });

  it('refuses BigInt, circular and undefined values with NotSerialisableError', () => {
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    for (const v of [{ n: 10n }, circular, undefined, () => 1]) {
      assert.throws(
        () => encodeValue(v),
        (e: unknown) => e instanceof NotSerialisableError && e.reason === 'not-serialisable' && !e.retriable,
      );
    }
  });

  it('stages an event with its content type, validating it first', () => {
    const s = stageEvent('orders', { key: 'k1', value: { a: 1 }, headers: { type: 'OrderPlaced' } }, 2);
    assert.equal(s.topic, 'orders');
    assert.deepEqual(s.key, Buffer.from('k1'));
    assert.equal(s.sequence, 2);
    assert.equal(s.headers.type, 'OrderPlaced');
    assert.equal(s.headers[HEADERS.contentType], CONTENT_TYPES.json);
    assert.throws(() => stageEvent('bad topic', { value: 1 }, 0), { name: 'InvalidTopicError' });
    assert.throws(() => stageEvent('t', { value: 'x'.repeat(2000) }, 0, 1000), {
      name: 'EventTooLargeError',
    });
    assert.equal(encodeKey(undefined), null);
  });

  it('refuses keys, headers and events of the wrong shape with NotSerialisableError', () => {
    assert.throws(() => encodeKey(42), NotSerialisableError);
    assert.throws(() => checkHeaders({ retries: 3 }), /header 'retries' must be a string/);
    assert.throws(() => checkEvent(null), NotSerialisableError);
    assert.throws(() => checkEvent({ value: 1, id: '' }), NotSerialisableError);
    assert.throws(
      () => stageEvent('t', { value: 1, headers: { n: 1 as unknown as string } }, 0),
      NotSerialisableError,
    );
    assert.deepEqual(checkHeaders(undefined), {});
  });

  it('reads a received record through the envelope, lazily', () => {
    const message = {
      key: Buffer.from('k'),
      value: Buffer.from('{"n":1}'),
      timestamp: '1000',
      attributes: 0,
      offset: '42',
      headers: {
        [HEADERS.id]: Buffer.from('x:1'),
        [HEADERS.xid]: Buffer.from('x'),
        [HEADERS.publishedAtMs]: Buffer.from('1500'),
        [HEADERS.contentType]: Buffer.from(CONTENT_TYPES.json),
        type: [Buffer.from('A'), Buffer.from('B')],
      },
    };
    const e = new ReceivedEvent('t', 3, message);
    assert.equal(e.id, 'x:1');
    assert.equal(e.xid, 'x');
    assert.equal(e.publishedAtMs, 1500);
    assert.deepEqual(e.value, { n: 1 });
    assert.equal(e.header('type'), 'B');
    assert.equal(e.headers.type, 'B');
    assert.equal(e.keyText, 'k');
    const bare = new ReceivedEvent('t', 0, { ...message, headers: {} });
    assert.equal(bare.id, 't:0:42', 'a record without a DMTP id is named by its coordinates');
    assert.equal(bare.publishedAtMs, 1000, 'falls back to the Kafka timestamp');
    assert.deepEqual(bare.value, Buffer.from('{"n":1}'));
  });
});
