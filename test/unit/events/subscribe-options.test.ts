import { strict as assert } from 'node:assert';
import { InvalidArgumentError } from '../../../common';
import { compileSubscribeOptions, type SubscribeOptions } from '../../../events';

const base: SubscribeOptions = {
  brokers: ['fake:9092'],
  topics: ['orders'],
  group: 'g',
  handler: async () => undefined,
};

/** Asserts that `options` is refused with an InvalidArgumentError whose message matches `message`. */
function refused(options: Partial<SubscribeOptions>, message: RegExp): void {
  assert.throws(
    () => compileSubscribeOptions({ ...base, ...options }),
    (err: Error) => {
      assert.ok(err instanceof InvalidArgumentError, `${err.name}: ${err.message}`);
      assert.match(err.message, message);
      return true;
    },
    JSON.stringify(options),
  );
}

describe('events/subscribe-options', () => {
  it('refuses group timings that are not positive whole numbers, naming the option and the value', () => {
    // Before, heartbeatIntervalMs 0 or -5 heartbeat without pause, NaN and the like went to kafkajs unchecked.
    for (const k of ['heartbeatIntervalMs', 'sessionTimeoutMs', 'rebalanceTimeoutMs'] as const) {
      for (const v of [0, -5, NaN, Infinity, 1.5]) {
        refused(
          { [k]: v, ...(k === 'sessionTimeoutMs' ? { heartbeatIntervalMs: 1 } : {}) },
          new RegExp(`${k}.*got ${v}`),
        );
      }
    }
  });

  it('refuses fetch sizes and waits out of range; a fetch may wait 0 ms', () => {
    for (const v of [0, -1, NaN, 2 ** 31])
      refused({ maxBytesPerPartition: v }, new RegExp(`maxBytesPerPartition.*got ${v}`));
    for (const v of [-1, NaN, 0.5]) refused({ maxWaitTimeMs: v }, new RegExp(`maxWaitTimeMs.*got ${v}`));
    assert.equal(compileSubscribeOptions({ ...base, maxWaitTimeMs: 0 }).maxWaitTimeMs, 0);
  });

  it('refuses a heartbeat interval not below the session timeout with a typed error, not kafkajs own', () => {
    refused(
      { sessionTimeoutMs: 100 },
      /heartbeatIntervalMs \(3000\) must be less than sessionTimeoutMs \(100\)/,
    );
    refused({ sessionTimeoutMs: 500, heartbeatIntervalMs: 500 }, /heartbeatIntervalMs \(500\)/);
    const o = compileSubscribeOptions({ ...base, sessionTimeoutMs: 6_000, heartbeatIntervalMs: 500 });
    assert.equal(o.heartbeatIntervalMs, 500);
  });

  it('refuses a dedupe window of no ids with a typed error (it was a RangeError from the window)', () => {
    for (const windowSize of [0, -1, 2.5, NaN])
      refused({ dedupe: { windowSize } }, new RegExp(`dedupe.windowSize.*got ${windowSize}`));
    refused(
      { dedupe: 'yes' as unknown as boolean },
      /dedupe must be true, false or \{ windowSize \}, got yes/,
    );
    assert.deepEqual(compileSubscribeOptions({ ...base, dedupe: { windowSize: 5 } }).dedupe, {
      windowSize: 5,
    });
  });

  it('keeps refusing bad retries and concurrency, now naming the value', () => {
    refused({ retries: -1 }, /retries.*got -1/);
    refused({ concurrency: 0 }, /concurrency.*got 0/);
    refused({ maxAgeMs: 0 }, /maxAgeMs must be > 0, got 0/);
  });
});
