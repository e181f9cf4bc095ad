// txGrpcInterceptor (the initiator's side for plain grpc-js clients) against a grpc-js server on loopback in this
// process. A call that may have run without its answer saying so (a timeout, a lost connection) makes the
// transaction rollback-only: before, the interceptor ignored every failure, and a call whose late answer the
// caller never saw committed its work with the branch an earlier call had reported.
import { strict as assert } from 'node:assert';
import { InterceptingCall, Metadata, type Interceptor } from '@grpc/grpc-js';
import { FailedPreconditionError, MD, UnavailableError } from '../../../common';
import { txGrpcInterceptor } from '../../../txapi';
import { runInTx } from '../../../txapi/context';
import { freePort } from '../../../common';
import { jsonMethod, JsonClient, serveEntries, type Served } from '../../support/txapi-grpc';
import { initiatorContext } from '../../support/tx-context';

const SLOW = '/audit.Svc/Slow';
const REFUSED = '/audit.Svc/Refused';
const OK = '/audit.Svc/Ok';
const FAILED_ONWARD = '/audit.Svc/FailedOnward';
const UNREADABLE = '/audit.Svc/Unreadable';
const TAKEN = '/audit.Svc/Taken';
/** Called by one test only: warnings are said once per method and process. */
const IGNORING = '/audit.Svc/Ignoring';
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
      jsonMethod(IGNORING, () => 'ok'),
      jsonMethod(FAILED_ONWARD, ({ trailers }) => {
        trailers.add(MD.failedBranch, JSON.stringify(ONWARD));
        throw new FailedPreconditionError('limit exceeded');
      }),
      // Does its work and answers OK with a report of its branch the caller cannot read (a newer participant,
      // a proxy that rewrote the trailer).
      // A participant's method with no resource: no branch, the context taken.
      jsonMethod(TAKEN, ({ trailers }) => {
        trailers.set(MD.taken, '1');
        return 'ok';
      }),
      jsonMethod(UNREADABLE, ({ trailers }) => {
        trailers.add(MD.branch, '{"branchId":"db@svc-1","garbled');
        return 'ok';
      }),
    ]);
    grpcClient = new JsonClient(
      served.address,
      [SLOW, REFUSED, OK, FAILED_ONWARD, UNREADABLE, TAKEN, IGNORING],
      [txGrpcInterceptor],
    );
  });
  after(async () => {
    grpcClient.close();
    for (const t of timers) clearTimeout(t);
    await served.stop();
  });

  const ctx = initiatorContext;

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

  it('an answer whose branch report cannot be read fails the call and makes the transaction rollback-only', async () => {
    // Before, the caller got INTERNAL but the transaction stayed committable: a block that caught the error
    // committed the branch holding the "failed" call's work (DMTP's client makes it rollback-only: callFailed).
    const tx = ctx();
    await runInTx(tx, () => assert.rejects(grpcClient.call(UNREADABLE, {}), { code: 13 }));
    assert.match(
      String(tx.rollbackOnly),
      /^a call to \/audit\.Svc\/Unreadable failed after it was sent \(the callee reported a branch this caller cannot read/,
    );
  });

  it('an answer with neither a branch nor the context taken is warned of, once per method', async () => {
    const said: unknown[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string) => {
      if (/ignored it/.test(String(chunk))) said.push(JSON.parse(String(chunk)).method);
      return true;
    }) as typeof process.stderr.write;
    try {
      await runInTx(ctx(), async () => {
        await grpcClient.call(TAKEN, {});
        await grpcClient.call(IGNORING, {});
        await grpcClient.call(IGNORING, {});
      });
    } finally {
      process.stderr.write = write;
    }
    assert.deepEqual(said, [IGNORING]);
  });

  it('a call that never left (no connection) leaves the transaction as it was', async () => {
    // Before, grpc-js's "No connection established" read as "may have run" and doomed the transaction, unlike
    // DMTP's client (notSent): nothing reached a server, so nothing can sit in a branch.
    const nobody = new JsonClient(`127.0.0.1:${await freePort()}`, [OK], [txGrpcInterceptor]);
    try {
      const tx = ctx();
      await runInTx(tx, () =>
        assert.rejects(nobody.call(OK, {}), { code: 14, message: /^No connection established/ }),
      );
      assert.equal(tx.rollbackOnly, undefined);
    } finally {
      nobody.close();
    }
  });

  it('a call refused because the transaction is ending creates no grpc-js call below it', async () => {
    // Before, the refused call was created and never started nor cancelled: its channel never went idle, and its
    // deadline timer kept the process alive until the deadline, after the client was closed.
    let created = 0;
    const below: Interceptor = (options, nextCall) => {
      created++;
      return new InterceptingCall(nextCall(options));
    };
    const refusing = new JsonClient(served.address, [OK], [txGrpcInterceptor, below]);
    try {
      const tx = { ...ctx(), active: false };
      await runInTx(tx, () =>
        assert.rejects(refusing.call(OK, {}, new Metadata(), 60_000), { code: 9, message: /is ending/ }),
      );
      assert.equal(created, 0, 'no call was made below the interceptor');
      await refusing.call(OK, {});
      assert.equal(created, 1, 'outside the transaction the call goes through');
    } finally {
      refusing.close();
    }
  });
});
