/** CallAdmission (rpc/admission.ts), the pure counter behind a server's `maxConcurrentCalls`. */
import { strict as assert } from 'node:assert';
import { ResourceExhaustedError } from '../../../common';
import { CallAdmission } from '../../../rpc/admission';

describe('rpc CallAdmission', () => {
  it('admits up to its limit, refuses the next with the method and limit named, and admits again after a leave', () => {
    const a = new CallAdmission(2);
    assert.equal(a.enter(false, '/s/A'), undefined);
    assert.equal(a.enter(undefined, '/s/A'), undefined);
    const refused = a.enter(false, '/s/B');
    assert.ok(refused instanceof ResourceExhaustedError);
    assert.equal(
      refused.message,
      'this instance is running 2 calls, its limit (maxConcurrentCalls): /s/B was not run; try another instance',
    );
    assert.deepEqual(refused.details, { method: '/s/B', maxConcurrentCalls: 2 });
    assert.deepEqual([a.active, a.refusedTotal], [2, 1]);
    a.leave();
    assert.equal(a.enter(false, '/s/B'), undefined);
    assert.deepEqual([a.active, a.refusedTotal], [2, 1]);
  });

  it('always admits an unlimited call, and counts it against the others', () => {
    const a = new CallAdmission(1);
    assert.equal(a.enter(true, '/p/Commit'), undefined);
    assert.equal(a.enter(true, '/p/Commit'), undefined);
    assert.equal(a.active, 2);
    assert.ok(a.enter(false, '/s/A') instanceof ResourceExhaustedError);
    a.leave();
    assert.ok(a.enter(false, '/s/A') instanceof ResourceExhaustedError, 'still one running: at the limit');
    a.leave();
    assert.equal(a.enter(false, '/s/A'), undefined);
  });

  it('never refuses without a limit', () => {
    const a = new CallAdmission(Infinity);
    for (let i = 0; i < 10_000; i++) assert.equal(a.enter(false, '/s/A'), undefined);
    assert.deepEqual([a.active, a.refusedTotal], [10_000, 0]);
  });
});
