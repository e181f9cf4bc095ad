import { strict as assert } from 'node:assert';
import { InvalidArgumentError, type Logger } from '../../../common';
import {
  decodeInstance,
  encodeInstance,
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
