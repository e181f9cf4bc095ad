/** What `new Coordinator(options)` refuses before anything starts (no etcd, no sockets). */
import { strict as assert } from 'node:assert';
import type { Etcd3 } from 'etcd3';
import { InvalidArgumentError } from '../../../common';
import { Coordinator, ETCD_LOG_DEFAULTS, EtcdTxLog } from '../../../coordinator';
import { HA_DEFAULTS, HaMember, type HaHooks } from '../../../coordinator/ha';

describe('Coordinator options', () => {
  it('needs a log: etcd, a file, or a TxLog', () => {
    assert.throws(() => new Coordinator({ id: 'c1' }), /needs options\.etcd or options\.file/);
  });

  it('refuses HA on a file log: the file belongs to one coordinator', () => {
    assert.throws(
      () => new Coordinator({ id: 'c1', file: { path: '/tmp/x.txlog' }, ha: { leaseTtlSeconds: 5 } }),
      /HA needs the shared etcd log/,
    );
    assert.ok(new Coordinator({ id: 'c1', file: { path: '/tmp/x.txlog' }, ha: false }));
    assert.ok(new Coordinator({ id: 'c1', file: { path: '/tmp/x.txlog' } }));
  });

  it('registering in etcd needs etcd, also with a file log', () => {
    assert.throws(
      () => new Coordinator({ id: 'c1', file: { path: '/tmp/x.txlog' }, registry: true }),
      /registry: true registers in etcd/,
    );
  });

  it('refuses an invalid id, naming it', () => {
    assert.throws(() => new Coordinator({ id: 'has:colon', file: { path: '/tmp/x.txlog' } }), /has:colon/);
  });
});

/**
 * The HA and etcd-log knobs are refused where they are compiled (HaMember, EtcdTxLog), naming the option and the
 * value. Before, `ha.requestTimeoutMs: NaN` crashed the process (a NaN etcd deadline throws outside any call), a
 * scan period of 0 or NaN was a busy loop, and `etcd.maxConcurrentFlushes: 0` flushed nothing, ever (every commit
 * "not durable yet", stop() hanging on a drain that never came).
 */
describe('HA and etcd log options', () => {
  const noEtcd = {} as Etcd3; // the constructors refuse before they use it
  const hooks = {} as HaHooks;
  const refused = (option: string, value: string) => (err: unknown) =>
    err instanceof InvalidArgumentError &&
    new RegExp(
      `coordinator: ${option.replace('.', '\\.')} must be a whole number in \\d+-\\d+, got ${value}$`,
    ).test(err.message) &&
    err.details?.option === option;

  for (const [ha, option, value] of [
    [{ requestTimeoutMs: NaN }, 'ha.requestTimeoutMs', 'NaN'],
    [{ scanIntervalMs: 0 }, 'ha.scanIntervalMs', '0'],
    [{ scanIntervalMs: NaN }, 'ha.scanIntervalMs', 'NaN'],
    [{ scanIntervalMs: 2 ** 31 }, 'ha.scanIntervalMs', String(2 ** 31)],
    [{ leaseTtlSeconds: 0 }, 'ha.leaseTtlSeconds', '0'],
    [{ leaseTtlSeconds: 1.5 }, 'ha.leaseTtlSeconds', '1.5'],
    [{ twinProbeMs: -1 }, 'ha.twinProbeMs', '-1'],
    [{ retireAfterMs: -1 }, 'ha.retireAfterMs', '-1'],
    [{ retireAfterMs: 0 }, 'ha.retireAfterMs', '0'],
  ] as const) {
    it(`HaMember refuses ${option} ${value}`, () => {
      assert.throws(() => new HaMember(noEtcd, '/p', 'c1', hooks, ha), refused(option, value));
    });
  }

  it('HaMember takes the defaults and short test periods', () => {
    assert.deepEqual(new HaMember(noEtcd, '/p', 'c1', hooks).config, HA_DEFAULTS);
    const short = { leaseTtlSeconds: 2, scanIntervalMs: 100, retireAfterMs: 300 };
    assert.deepEqual(new HaMember(noEtcd, '/p', 'c1', hooks, short).config, { ...HA_DEFAULTS, ...short });
  });

  for (const [etcd, option, value] of [
    [{ maxConcurrentFlushes: 0 }, 'etcd.maxConcurrentFlushes', '0'],
    [{ maxConcurrentFlushes: NaN }, 'etcd.maxConcurrentFlushes', 'NaN'],
    [{ maxBatchOps: NaN }, 'etcd.maxBatchOps', 'NaN'],
    [{ maxBatchOps: -5 }, 'etcd.maxBatchOps', '-5'],
    [{ maxBatchBytes: 0 }, 'etcd.maxBatchBytes', '0'],
    [{ requestTimeoutMs: 0 }, 'etcd.requestTimeoutMs', '0'],
    [{ maxCachedMarkers: -1 }, 'etcd.maxCachedMarkers', '-1'],
    [{ finishLingerMs: NaN }, 'etcd.finishLingerMs', 'NaN'],
    [{ outcomeRetentionSeconds: 0 }, 'outcomeRetentionSeconds', '0'],
  ] as const) {
    it(`EtcdTxLog refuses ${option} ${value}`, () => {
      assert.throws(() => new EtcdTxLog({ prefix: '/p', client: noEtcd, ...etcd }), refused(option, value));
    });
  }

  it('EtcdTxLog takes the defaults, and 0 where 0 means something (no lingering, no marker cache)', () => {
    const zero = { finishLingerMs: 0, maxCachedMarkers: 0 };
    const log = new EtcdTxLog({ prefix: '/p/', client: noEtcd, ...zero });
    assert.deepEqual(log.config, {
      ...ETCD_LOG_DEFAULTS,
      ...zero,
      prefix: '/p',
      outcomeRetentionSeconds: 3600,
    });
  });

  it('new Coordinator refuses a bad ha or etcd log option (with HA the log is made after the lock is taken)', () => {
    const etcd = { endpoints: ['http://127.0.0.1:1'], prefix: '/p' };
    assert.throws(
      () => new Coordinator({ id: 'c1', etcd, ha: { scanIntervalMs: 0 } }),
      refused('ha.scanIntervalMs', '0'),
    );
    assert.throws(
      () => new Coordinator({ id: 'c1', etcd: { ...etcd, maxConcurrentFlushes: 0 } }),
      refused('etcd.maxConcurrentFlushes', '0'),
    );
  });

  // Nothing answers at 127.0.0.1:1: a start that got as far as etcd would fail otherwise (not INVALID_ARGUMENT).
  const etcd = { endpoints: ['http://127.0.0.1:1'], prefix: '/p' };
  it('a Coordinator refuses a bad ha option before it calls etcd', async () => {
    await assert.rejects(
      async () => new Coordinator({ id: 'c1', etcd, ha: { requestTimeoutMs: NaN } }).start(),
      refused('ha.requestTimeoutMs', 'NaN'),
    );
  });

  it('a Coordinator refuses a bad etcd log option before it calls etcd', async () => {
    await assert.rejects(
      async () =>
        new Coordinator({ id: 'c1', etcd: { ...etcd, maxConcurrentFlushes: 0 }, ha: false }).start(),
      refused('etcd.maxConcurrentFlushes', '0'),
    );
  });
});
