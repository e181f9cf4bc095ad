/** The one table between DMTP's typed errors and gRPC status codes, both ways. */
import { strict as assert } from 'node:assert';
import { status } from '@grpc/grpc-js';
import * as errors from '../../../common/errors';

const TYPED = [
  errors.InvalidArgumentError,
  errors.NotFoundError,
  errors.FailedPreconditionError,
  errors.ResourceExhaustedError,
  errors.UnavailableError,
  errors.DeadlineExceededError,
  errors.AbortedError,
  errors.CancelledError,
  errors.InternalError,
  errors.DataLossError,
];

describe('common/errors: typed errors <-> gRPC status', () => {
  it('every typed error travels as its code and comes back as the same class, message and all', () => {
    for (const Ctor of TYPED) {
      const err = new Ctor(`a ${Ctor.name}`, { details: { xid: 'c1:1:a' } });
      const { code, details } = errors.toStatus(err);
      assert.notEqual(code, status.UNKNOWN, Ctor.name);
      const back = errors.fromStatus(code, details);
      assert.ok(back instanceof Ctor, `${Ctor.name} came back as ${back.name}`);
      assert.equal(back.message, `a ${Ctor.name}`);
      assert.equal(back.code, code);
    }
  });

  it('DATA_LOSS is a DataLossError: the coordinator tells "cannot tell" from a refusal by it', () => {
    const back = errors.fromStatus(status.DATA_LOSS, 'branch b of x is not known here');
    assert.ok(back instanceof errors.DataLossError);
    assert.equal(back.retriable, false);
  });

  it('a code without a class keeps its code; a plain Error is INTERNAL', () => {
    assert.equal(errors.fromStatus(status.OUT_OF_RANGE, 'x').code, status.OUT_OF_RANGE);
    assert.equal(errors.toStatus(new Error('boom')).code, status.INTERNAL);
  });
});
