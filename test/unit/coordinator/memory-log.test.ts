import { strict as assert } from 'node:assert';
import { ManualClock } from '../../../common';
import { MemoryTxLog } from '../../../coordinator/log/memory-log';
import { UnsafeLogError } from '../../../coordinator/errors';
import { txLogContract } from '../../support/tx-log-contract';

let clock = new ManualClock();
txLogContract('memory', {
  make: async () => {
    clock = new ManualClock();
    return new MemoryTxLog({ unsafeForTests: true, clock, outcomeRetentionSeconds: 100 });
  },
  expiry: { retentionSeconds: 100, advance: (ms) => clock.advance(ms) },
});

describe('MemoryTxLog outside tests', () => {
  it('refuses to construct unless asked explicitly, and says why', () => {
    const env = process.env.NODE_ENV;
    process.env.NODE_ENV = 'production';
    try {
      assert.throws(
        () => new MemoryTxLog(),
        (e: Error) => e instanceof UnsafeLogError && /unsafeForTests/.test(e.message),
      );
      assert.ok(new MemoryTxLog({ allowInProduction: true }));
      assert.ok(new MemoryTxLog({ unsafeForTests: true }));
    } finally {
      if (env === undefined) delete process.env.NODE_ENV;
      else process.env.NODE_ENV = env;
    }
  });
});
