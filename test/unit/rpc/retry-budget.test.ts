import { strict as assert } from 'node:assert';
import { RetryBudget } from '../../../rpc/retry-budget';

describe('rpc retry budget', () => {
  it('allows a burst of `capacity` retries, then about `ratio` of the calls', () => {
    const b = new RetryBudget({ ratio: 0.2, capacity: 10 });
    let burst = 0;
    while (b.tryRetry()) burst++;
    assert.equal(burst, 10);
    let allowed = 0;
    for (let i = 0; i < 1000; i++) {
      b.onCall();
      if (b.tryRetry()) allowed++; // every call fails and wants a retry
    }
    assert.ok(allowed >= 195 && allowed <= 200, `allowed ${allowed}`);
  });

  it('never holds more than its capacity', () => {
    const b = new RetryBudget({ ratio: 1, capacity: 3 });
    for (let i = 0; i < 100; i++) b.onCall();
    assert.equal(b.available, 3);
  });
});
