import { strict as assert } from 'node:assert';
import { InvalidArgumentError, type Logger } from '../../../common';
import {
  decodeInstance,
  encodeInstance,
  MAX_VALUE_BYTES,
  parseInstanceKey,
  validateInstanceId,
  validateServiceName,
  validateSpec,
  ValueDecoder,
} from '../../../registry';
import { ServiceView } from '../../../registry/service-view';
import type { ChangeEvent, ServiceInstance } from '../../../registry';

function captureLog(): { log: Logger; warnings: Array<Record<string, unknown>> } {
  const warnings: Array<Record<string, unknown>> = [];
  const log: Logger = {
    namespace: 'test',
    debug: () => undefined,
    info: () => undefined,
    warn: (msg, fields) => warnings.push({ msg, ...fields }),
    error: () => undefined,
    child: () => log,
  };
  return { log, warnings };
}

const inst = (
  id: string,
  address = '127.0.0.1:1',
  extra: Partial<ServiceInstance> = {},
): ServiceInstance => ({
  service: 'svc',
  instanceId: id,
  address,
  version: '',
  zone: '',
  weight: 1,
  metadata: {},
  startedAt: 1,
  ...extra,
});

describe('registry validation', function () {
  describe('service names and instance ids', function () {
    const cases: Array<[string, unknown, RegExp]> = [
      ['empty', '', /non-empty/],
      ['not a string', 42, /non-empty string/],
      ['129 characters', 'a'.repeat(129), /129 characters long; the limit is 128/],
      ['a slash', 'a/b', /must not contain '\/'/],
      ['a NUL', 'a\u0000b', /control characters/],
      ['a newline', 'a\nb', /control characters/],
      ['a C1 control', 'a\u0085b', /control characters/],
    ];
    for (const [what, value, message] of cases) {
      it(`refuses ${what}, saying why`, function () {
        assert.throws(
          () => validateServiceName(value),
          (e: unknown) => {
            assert.ok(e instanceof InvalidArgumentError);
            assert.match(e.message, /^service name/);
            assert.match(e.message, message);
            return true;
          },
        );
        assert.throws(() => validateInstanceId(value), /^InvalidArgumentError: instance id/);
      });
    }

    it('accepts 1 to 128 characters, dots, dashes, colons and unicode letters', function () {
      for (const ok of ['a', 'a'.repeat(128), 'inventory-v2.eu', 'host:7001', 'заказы']) {
        assert.equal(validateServiceName(ok), ok);
        assert.equal(validateInstanceId(ok), ok);
      }
    });
  });

  describe('instance specs', function () {
    it('fills the defaults', function () {
      assert.deepEqual(
        validateSpec({ service: 'svc', instanceId: 'i1', address: '127.0.0.1:1' }, 1),
        inst('i1'),
      );
    });

    it('refuses a bad address, weight or metadata', function () {
      const base = { service: 'svc', instanceId: 'i1', address: '127.0.0.1:1' };
      for (const bad of [
        { address: '' },
        { address: 'a b:1' },
        { weight: -1 },
        { weight: Number.NaN },
        { metadata: { k: 1 as unknown as string } },
        { version: 3 as unknown as string },
      ]) {
        assert.throws(() => validateSpec({ ...base, ...bad }, 1), InvalidArgumentError, JSON.stringify(bad));
      }
    });
  });

  describe('value size', function () {
    // The encoded value of an instance whose metadata blob is `n` characters long.
    const withBlob = (n: number) => ({
      service: 'svc',
      instanceId: 'i1',
      address: '127.0.0.1:1',
      metadata: { blob: 'x'.repeat(n) },
    });
    const overhead = Buffer.byteLength(encodeInstance(validateSpec(withBlob(0), 1)));

    it(`accepts a value of exactly MAX_VALUE_BYTES (${MAX_VALUE_BYTES}) bytes`, function () {
      const i = validateSpec(withBlob(MAX_VALUE_BYTES - overhead), 1);
      assert.equal(Buffer.byteLength(encodeInstance(i)), MAX_VALUE_BYTES);
    });

    it('refuses one byte more, naming the service, instance, size and limit', function () {
      // Before, any size was accepted: a few 1.2 MiB values made the service's read pass grpc-js's 4 MiB.
      assert.throws(
        () => validateSpec(withBlob(MAX_VALUE_BYTES - overhead + 1), 1),
        (e: unknown) => {
          assert.ok(e instanceof InvalidArgumentError);
          assert.match(
            e.message,
            new RegExp(`'svc/i1'.*${MAX_VALUE_BYTES + 1} bytes.*limit is ${MAX_VALUE_BYTES}`),
          );
          assert.deepEqual(e.details, {
            service: 'svc',
            instanceId: 'i1',
            bytes: MAX_VALUE_BYTES + 1,
            limit: MAX_VALUE_BYTES,
          });
          return true;
        },
      );
    });

    it('counts bytes, not characters', function () {
      // 'é' is two bytes in UTF-8: half as many characters already pass the limit.
      const spec = { ...withBlob(0), metadata: { blob: 'é'.repeat(MAX_VALUE_BYTES / 2) } };
      assert.throws(() => validateSpec(spec, 1), /bytes; the limit is/);
    });

    it('a stored value over the limit is refused, and ValueDecoder warns naming its key and size', function () {
      const raw = JSON.stringify({
        address: '127.0.0.1:1',
        startedAt: 1,
        metadata: { blob: 'y'.repeat(200_000) },
      });
      const bytes = Buffer.byteLength(raw);
      assert.throws(() => decodeInstance('svc', 'i1', raw), new RegExp(`${bytes} bytes; the limit is`));
      const { log, warnings } = captureLog();
      assert.equal(new ValueDecoder(log).decode('/p/services/svc/i1', 'svc', 'i1', raw), undefined);
      assert.equal(warnings.length, 1);
      assert.equal(warnings[0].key, '/p/services/svc/i1');
      assert.equal(warnings[0].bytes, bytes);
    });
  });

  describe('stored values', function () {
    it('round-trips an instance through its JSON value', function () {
      const i = inst('i1', '10.0.0.1:7', { version: '2', zone: 'z', weight: 0, metadata: { mux: '1' } });
      assert.deepEqual(decodeInstance('svc', 'i1', encodeInstance(i)), i);
      assert.deepEqual(Object.keys(JSON.parse(encodeInstance(i))), [
        'address',
        'version',
        'zone',
        'weight',
        'metadata',
        'startedAt',
      ]);
    });

    it('refuses foreign and malformed values', function () {
      for (const raw of ['', 'not json', '[]', 'null', '"str"', '{"address":"a:1"}', '{"startedAt":1}']) {
        assert.throws(() => decodeInstance('svc', 'i1', raw), InvalidArgumentError, raw);
      }
    });

    it('ValueDecoder warns once per bad key, and again after the key was fixed or deleted', function () {
      const { log, warnings } = captureLog();
      const d = new ValueDecoder(log);
      assert.equal(d.decode('/p/services/svc/i1', 'svc', 'i1', 'garbage'), undefined);
      assert.equal(d.decode('/p/services/svc/i1', 'svc', 'i1', 'garbage again'), undefined);
      assert.equal(d.decode('/p/services/svc/x/y', undefined, undefined, '{}'), undefined);
      assert.equal(warnings.length, 2);
      assert.equal(warnings[0].key, '/p/services/svc/i1');
      assert.ok(d.decode('/p/services/svc/i1', 'svc', 'i1', encodeInstance(inst('i1'))));
      d.decode('/p/services/svc/i1', 'svc', 'i1', 'broken later');
      assert.equal(warnings.length, 3);
    });

    it('parses keys of the layout and rejects others', function () {
      assert.deepEqual(parseInstanceKey('/dmtp', '/dmtp/services/svc/i1'), {
        service: 'svc',
        instanceId: 'i1',
      });
      for (const k of [
        '/dmtp/services/svc',
        '/dmtp/services/svc/',
        '/dmtp/services/svc/a/b',
        '/other/services/s/i',
      ]) {
        assert.equal(parseInstanceKey('/dmtp', k), undefined, k);
      }
    });
  });

  describe('ServiceView.reconcile', function () {
    it('emits exactly the difference between the cache and a fresh read', function () {
      const view = new ServiceView('svc', captureLog().log);
      const events: ChangeEvent[] = [];
      view.subscribe((e) => events.push(e));
      view.reconcile(
        new Map([
          ['a', inst('a')],
          ['b', inst('b')],
          ['c', inst('c')],
        ]),
      );
      events.length = 0;
      view.reconcile(
        new Map([
          ['a', inst('a')],
          ['b', inst('b', '127.0.0.1:2')],
          ['d', inst('d')],
        ]),
      );
      assert.deepEqual(events.map((e) => `${e.type}:${e.instance.instanceId}`).sort(), [
        'add:d',
        'remove:c',
        'update:b',
      ]);
      assert.deepEqual(
        view.snapshot().map((i) => i.instanceId),
        ['a', 'b', 'd'],
      );
      events.length = 0;
      view.reconcile(
        new Map([
          ['a', inst('a')],
          ['b', inst('b', '127.0.0.1:2')],
          ['d', inst('d')],
        ]),
      );
      assert.deepEqual(events, [], 'the same read again changes nothing');
    });
  });
});
