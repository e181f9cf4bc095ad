// txGrpcInterceptor (the initiator's side for plain grpc-js clients) against a grpc-js server on loopback in this
// process. A call that may have run without its answer saying so (a timeout, a lost connection) makes the
// transaction rollback-only: before, the interceptor ignored every failure, and a call whose late answer the
// caller never saw committed its work with the branch an earlier call had reported.
import { strict as assert } from 'node:assert';
import { Metadata } from '@grpc/grpc-js';
import { FailedPreconditionError, MD, mintXid, UnavailableError } from '../../../common';
import { txGrpcInterceptor } from '../../../txapi';
import { runInTx, type TxContext } from '../../../txapi/context';
import { jsonMethod, JsonClient, serveEntries, type Served } from '../../support/txapi-grpc';

const SLOW = '/audit.Svc/Slow';
const REFUSED = '/audit.Svc/Refused';
const OK = '/audit.Svc/Ok';
const FAILED_ONWARD = '/audit.Svc/FailedOnward';
/** The branch the failing handler's onward call did work in (as DMTP's participant reports it on the error). */
const ONWARD = {
  branchId: 'db@stock-1',
  service: 'stock',
  instanceId: 'stock-1',
  address: '127.0.0.1:6',
  resource: 'db',
};

describe('txGrpcInterceptor: failures that may have run', () => {
  let served: Served;
  let grpcClient: JsonClient;
  const timers = new Set<NodeJS.Timeout>();

  before(async () => {
    served = await serveEntries([
      // Does its work, answers after the caller's deadline.
      jsonMethod(SLOW, () => new Promise((resolve) => timers.add(setTimeout(() => resolve('late'), 300)))),
      // The server's own answer (serveEntries marks it answered, as DMTP's servers do).
      jsonMethod(REFUSED, () => {
        throw new UnavailableError('not now');
      }),
      jsonMethod(OK, () => 'ok'),
      jsonMethod(FAILED_ONWARD, ({ trailers }) => {
        trailers.add(MD.failedBranch, JSON.stringify(ONWARD));
        throw new FailedPreconditionError('limit exceeded');
      }),
    ]);
    grpcClient = new JsonClient(served.address, [SLOW, REFUSED, OK, FAILED_ONWARD], [txGrpcInterceptor]);
  });
  after(async () => {
    grpcClient.close();
    for (const t of timers) clearTimeout(t);
    await served.stop();
  });

  const ctx = (): TxContext => ({
    xid: mintXid('coord-1'),
    coordinatorAddress: '127.0.0.1:7000',
    deadlineAtMs: Date.now() + 10_000,
    role: 'initiator',
    branches: [],
    events: [],
    active: true,
  });

  it('a call that timed out after it was sent makes the transaction rollback-only', async () => {
    const tx = ctx();
    await runInTx(tx, async () => {
      await grpcClient.call(OK, {});
      await assert.rejects(grpcClient.call(SLOW, {}, new Metadata(), 50), { code: 4 });
    });
    assert.match(String(tx.rollbackOnly), /^a call to \/audit\.Svc\/Slow failed after it was sent/);
  });

  it('a failure the server answered itself, and a success, leave the transaction as it was', async () => {
    const tx = ctx();
    await runInTx(tx, async () => {
      await grpcClient.call(OK, {});
      await assert.rejects(grpcClient.call(REFUSED, {}), { code: 14 });
    });
    assert.equal(tx.rollbackOnly, undefined);
  });

  it("a failed answer that reports its handler's onward branch: rollback-only when the transaction holds it", async () => {
    const holds = ctx();
    holds.branches.push(ONWARD);
    await runInTx(holds, () => assert.rejects(grpcClient.call(FAILED_ONWARD, {}), { code: 9 }));
    assert.match(
      String(holds.rollbackOnly),
      /^the call \/audit\.Svc\/FailedOnward failed \(limit exceeded\) .* sits in branch db@stock-1/,
    );
    const apart = ctx();
    await runInTx(apart, () => assert.rejects(grpcClient.call(FAILED_ONWARD, {}), { code: 9 }));
    assert.equal(apart.rollbackOnly, undefined, 'no branch of the transaction holds that work');
    assert.deepEqual([...(apart.failedBranches?.keys() ?? [])], ['stock-1|db@stock-1']);
  });
});
