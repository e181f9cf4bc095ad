import { strict as assert } from 'node:assert';
import { status } from '@grpc/grpc-js';
import { UsageError } from '../../../bin/args';
import { CliError, coordinatorError, etcdError, formatError } from '../../../bin/errors';

const grpcError = (code: status, details: string) =>
  Object.assign(new Error(`${code} ${status[code]}: ${details}`), { code, details });

describe('bin/errors', () => {
  it('formats a usage error with the command and a pointer to its help', () => {
    assert.equal(
      formatError(new UsageError("unknown option '--x'", 'tx list')),
      "dmtp tx list: unknown option '--x' (see 'dmtp tx list --help')",
    );
    assert.equal(
      formatError(new UsageError("unknown command 'nope'")),
      "dmtp: unknown command 'nope' (see 'dmtp --help')",
    );
  });

  it('keeps the first line of any other error, never a stack', () => {
    const err = new Error('first line\nsecond line');
    assert.equal(formatError(err, 'services'), 'dmtp services: first line');
    assert.equal(formatError('plain text'), 'dmtp: plain text');
    assert.doesNotMatch(formatError(new TypeError('boom'), 'tx show'), /\bat\b/);
  });

  it('says which coordinator cannot be reached, reducing grpc-js "Last error" noise', () => {
    const e = coordinatorError(
      grpcError(
        status.UNAVAILABLE,
        'No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:1. Resolution note: ',
      ),
      '127.0.0.1:1',
      5_000,
    );
    assert.ok(e instanceof CliError);
    assert.equal(e.message, 'cannot reach the coordinator at 127.0.0.1:1 (connect ECONNREFUSED 127.0.0.1:1)');
  });

  it('maps timeouts, refusals and unknown xids to plain sentences', () => {
    const at = (code: status, d: string) => coordinatorError(grpcError(code, d), 'h:1', 2_000).message;
    assert.equal(
      at(status.DEADLINE_EXCEEDED, 'Deadline exceeded'),
      'the coordinator at h:1 did not answer within 2000 ms',
    );
    assert.equal(
      at(status.FAILED_PRECONDITION, 'transaction x is already decided'),
      'refused: transaction x is already decided',
    );
    assert.equal(
      at(status.FAILED_PRECONDITION, 'transaction x already has a decision (TX_STATE_COMMITTING)'),
      'refused: transaction x already has a decision (COMMITTING)',
    );
    assert.equal(at(status.NOT_FOUND, 'transaction x is not known'), 'transaction x is not known');
    assert.equal(at(status.INTERNAL, 'oops'), 'coordinator at h:1: INTERNAL: oops');
  });

  it('passes through an error that is not a gRPC status', () => {
    const plain = new Error('local');
    assert.equal(coordinatorError(plain, 'h:1', 1), plain);
  });

  it('says which etcd endpoints cannot be reached', () => {
    assert.equal(
      etcdError(new Error('14 UNAVAILABLE: x'), ['http://a:1', 'http://b:2']).message,
      'cannot reach etcd at http://a:1,http://b:2 (14 UNAVAILABLE: x)',
    );
  });

  it('formats a raw gRPC error with its status name', () => {
    assert.equal(
      formatError(grpcError(status.UNAVAILABLE, 'down'), 'tx list'),
      'dmtp tx list: UNAVAILABLE: down',
    );
  });
});
