import { strict as assert } from 'node:assert';
import { setTimeout as sleep } from 'node:timers/promises';
import { Metadata } from '@grpc/grpc-js';
import {
  DeadlineExceededError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  MD,
  parseXid,
  ResourceExhaustedError,
  UnavailableError,
} from '../../../common';
import { EventTooLargeError } from '../../../events';
import type { OutgoingCall } from '../../../rpc/middleware';
import { createDmtp, currentTx, NestedTransactionError, txClientMiddleware, type Tx } from '../../../txapi';

// Transactions here enlist nothing, so they commit without a round trip: no coordinator is needed.
describe('txapi context', () => {
  const dmtp = createDmtp({ coordinator: { id: 'ctx-coord', address: '127.0.0.1:1' } });
  after(() => dmtp.close());

  const outgoing = (): OutgoingCall => ({
    service: 'svc',
    method: '/svc.S/M',
    request: {},
    metadata: new Metadata(),
    deadline: Infinity,
    idempotent: false,
  });
  /** A branch of instance i1, as a participant reports it. */
  const I1 = { branchId: 'db@i1', service: 'bank', instanceId: 'i1', address: '127.0.0.1:2', resource: 'db' };
  /** A call answered by registry instance `instanceId` with `ref` in its `dmtp-branch` trailer. */
  const callReporting = (ref: object, instanceId = 'i1') =>
    txClientMiddleware(outgoing(), async () => {
      const trailers = new Metadata();
      trailers.add(MD.branch, JSON.stringify(ref));
      return { response: {}, trailers, instanceId };
    });
  /** A call that fails with `err` (the block catches it and goes on). */
  const callFailing = (err: Error) =>
    txClientMiddleware(outgoing(), async () => {
      throw err;
    }).catch(() => undefined);

  it('keeps two concurrent transactions apart, across awaits and in outgoing metadata', async () => {
    const seen: string[][] = [[], []];
    const run = (i: number) =>
      dmtp.transaction(async (tx) => {
        for (let step = 0; step < 5; step++) {
          await sleep(i === 0 ? 3 : 2);
          assert.equal(currentTx()?.xid, tx.xid);
          const call = outgoing();
          await txClientMiddleware(call, async (c) => {
            seen[i].push(c.metadata.get(MD.xid)[0] as string);
            assert.ok(c.deadline <= tx.deadlineAtMs, 'the call deadline is capped by the transaction');
            return { response: {}, trailers: new Metadata(), instanceId: 'x' };
          });
        }
        return tx.xid;
      });
    const [a, b] = await Promise.all([run(0), run(1)]);
    assert.notEqual(a, b);
    assert.deepEqual(seen[0], Array(5).fill(a));
    assert.deepEqual(seen[1], Array(5).fill(b));
    assert.equal(currentTx(), undefined, 'nothing leaks out of the blocks');
  });

  it('mints xids that name the coordinator, without a round trip', async () => {
    const tx = await dmtp.begin({ timeoutMs: 1_000 });
    assert.equal(parseXid(tx.xid).owner, 'ctx-coord');
    assert.deepEqual(await tx.commit(), { status: 'committed' });
  });

  it('refuses a nested transaction with a typed error naming the outer xid', async () => {
    await dmtp.transaction(async (outer) => {
      await assert.rejects(
        dmtp.transaction(async () => 1),
        (err: unknown) => err instanceof NestedTransactionError && err.details.xid === outer.xid,
      );
      await assert.rejects(dmtp.begin(), NestedTransactionError);
    });
  });

  it('runs a joined block in the outer transaction, and its rollback dooms the outer one', async () => {
    let inner: Tx | undefined;
    const err = await dmtp
      .transaction(async (outer) => {
        const v = await dmtp.transaction(
          async (tx) => {
            inner = tx;
            assert.equal(tx.xid, outer.xid);
            await tx.rollback('inner said no');
            return 7;
          },
          { join: true },
        );
        assert.equal(v, 7);
      })
      .catch((e: unknown) => e);
    assert.equal((err as Error).name, 'TransactionAbortedError');
    assert.match((err as Error).message, /inner said no/);
    assert.ok(inner?.joined);
  });

  it('rethrows the block error with the xid attached', async () => {
    let xid = '';
    const err = await dmtp
      .transaction(async (tx) => {
        xid = tx.xid;
        throw new RangeError('boom');
      })
      .catch((e: unknown) => e);
    assert.ok(err instanceof RangeError);
    assert.equal((err as RangeError & { xid: string }).xid, xid);
  });

  it('collects branches from trailers into the current transaction only', async () => {
    const ref = {
      branchId: 'db@i1',
      service: 'bank',
      instanceId: 'i1',
      address: '127.0.0.1:2',
      resource: 'db',
    };
    const ref2 = { ...ref, branchId: 'db@i2', instanceId: 'i2' };
    const ref3 = { ...ref, service: 'stock', branchId: 'db@i3', instanceId: 'i3' };
    const tx = await dmtp.begin();
    await tx.run(() =>
      txClientMiddleware(outgoing(), async () => {
        const trailers = new Metadata();
        trailers.add(MD.branch, JSON.stringify(ref));
        trailers.add(MD.branch, JSON.stringify(ref)); // reported twice: one branch
        // Repeated trailers as HTTP/2 (and the mux) deliver them: one value, joined by ", ".
        trailers.add(MD.branch, `${JSON.stringify(ref2)}, ${JSON.stringify(ref3)}`);
        return { response: {}, trailers, instanceId: 'i1' };
      }),
    );
    assert.deepEqual(tx.branches, [ref, ref2, ref3]);
    const other = await dmtp.begin();
    assert.deepEqual(other.branches, []);
    await tx.rollback('test done'); // the coordinator is unreachable: still aborted (presumed abort)
    await other.rollback();
    assert.equal(tx.outcome?.status, 'aborted');
  });
  it('fails a call whose branch report it cannot read, instead of leaving that branch out of Commit', async () => {
    const tx = await dmtp.begin();
    for (const bad of ['not json', '{"branchId":"db@i1"}', '[]x', '42']) {
      await assert.rejects(
        tx.run(() =>
          txClientMiddleware(outgoing(), async () => {
            const trailers = new Metadata();
            trailers.add(MD.branch, bad);
            return { response: {}, trailers, instanceId: 'i1' };
          }),
        ),
        (e: Error) => {
          assert.ok(e instanceof InternalError, `${bad}: ${e}`);
          assert.match(e.message, /reported a branch this caller cannot read/);
          return true;
        },
      );
    }
    assert.deepEqual(tx.branches, []);
    await tx.rollback('test done');
  });

  it('a call that failed after it was sent, at the address of an instance holding a branch, makes the transaction roll back', async () => {
    const tx = await dmtp.begin();
    await tx.run(async () => {
      await callReporting(I1, 'registered-under-another-id');
      // Its registry id differs from the participant's: the address tells it is the same instance.
      await callFailing(
        new DeadlineExceededError('no answer in time', {
          details: { address: '127.0.0.1:2', instanceId: 'other-id' },
        }),
      );
    });
    const outcome = await tx.commit();
    assert.equal(outcome.status, 'aborted');
    assert.match(
      (outcome as { reason: string }).reason,
      /instance other-id failed after it was sent .* cannot be told/,
    );
  });

  it('a failure the participant answered itself (it undid the call) leaves the transaction committable', async () => {
    const tx = await dmtp.begin();
    await tx.run(async () => {
      await callReporting(I1);
      await callFailing(
        new UnavailableError('stock is unavailable', { details: { instanceId: 'i1', answered: true } }),
      );
    });
    assert.equal(tx.rollbackOnly, undefined);
    await tx.rollback('test done');
  });

  it('reports a commit that never reached the coordinator as aborted, not unknown', async () => {
    // Nobody listens at 127.0.0.1:1: the Commit is never sent, so nothing can have been decided.
    const tx = await dmtp.begin();
    await tx.run(() => callReporting(I1));
    const outcome = await tx.commit();
    assert.equal(outcome.status, 'aborted', JSON.stringify(outcome));
    assert.match((outcome as { reason: string }).reason, /commit was not sent/);
  });

  it('refuses at publish what the coordinator would refuse at Commit: more than its events or bytes per transaction', async () => {
    // Before, publish checked only each event's own size: the 257th event, or events past 512 KiB in all,
    // staged fine and the coordinator refused the Commit (RESOURCE_EXHAUSTED), rolling back all business work.
    const tx = await dmtp.begin();
    for (let i = 0; i < 256; i++) tx.publish('orders', { key: `k${i}`, value: 'v' });
    assert.throws(
      () => tx.publish('orders', { value: 'one too many' }),
      (e: Error & { xid?: string }) =>
        e instanceof ResourceExhaustedError &&
        /already stages 256 events: the maximum is 256/.test(e.message) &&
        (e as Error & { xid?: string }).xid === tx.xid,
    );
    await tx.rollback('test done');

    const big = await dmtp.begin();
    const chunk = 'x'.repeat(200 * 1024);
    big.publish('orders', { value: chunk });
    big.publish('orders', { value: chunk });
    assert.throws(
      () => big.publish('orders', { value: chunk }),
      (e: Error) => e instanceof EventTooLargeError && /the maximum is 524288/.test(e.message),
    );
    big.publish('orders', { value: 'x'.repeat(1024) }); // the refused one staged nothing: a small one still fits
    await big.rollback('test done');

    // A joined block counts the outer block's events too (before, it began again from 0 bytes).
    await dmtp
      .transaction(async (outer) => {
        outer.publish('orders', { value: chunk });
        outer.publish('orders', { value: chunk });
        await dmtp.transaction(
          async (tx) => {
            assert.throws(() => tx.publish('orders', { value: chunk }), /the maximum is 524288/);
          },
          { join: true },
        );
        throw new Error('test done');
      })
      .catch((e: Error) => assert.match(e.message, /test done/));

    // The decision record's own limit (headers as JSON: a control character takes 6 bytes there).
    const escaped = await dmtp.begin();
    assert.throws(
      () => escaped.publish('orders', { value: 'v', headers: { note: '\u0001'.repeat(200_000) } }),
      (e: Error) =>
        e instanceof EventTooLargeError && /in its decision record .* the maximum is 1000000/.test(e.message),
    );
    await escaped.rollback('test done');

    const small = createDmtp({ coordinator: { id: 'ctx-coord', address: '127.0.0.1:1' }, maxEventsPerTx: 1 });
    try {
      const t = await small.begin();
      t.publish('orders', { value: 'a' });
      assert.throws(() => t.publish('orders', { value: 'b' }), ResourceExhaustedError);
      await t.rollback('test done');
    } finally {
      small.close();
    }
  });

  it('refuses to begin a transaction once closed (before, it ran its calls and could not end)', async () => {
    const closed = createDmtp({ coordinator: { id: 'ctx-coord', address: '127.0.0.1:1' } });
    closed.close();
    let ran = false;
    for (const attempt of [() => closed.begin(), () => closed.transaction(async () => void (ran = true))]) {
      await assert.rejects(
        attempt(),
        (e: Error) => e instanceof FailedPreconditionError && /is closed/.test(e.message),
      );
    }
    assert.equal(ran, false, 'the block never ran');
  });

  it('refuses bad settings when created, and a transaction longer than participants accept when begun', async () => {
    const coordinator = { id: 'ctx-coord', address: '127.0.0.1:1' };
    const bad: [Parameters<typeof createDmtp>[0], RegExp][] = [
      [
        { coordinator, defaultTimeoutMs: Number('') || Number.NaN },
        /defaultTimeoutMs must be a whole number in 1-600000, got NaN/,
      ],
      [{ coordinator, defaultTimeoutMs: 15 * 60_000 }, /defaultTimeoutMs .* got 900000/],
      [{ coordinator, commitTimeoutMs: 0 }, /commitTimeoutMs must be/],
      [{ coordinator, queryTimeoutMs: 2 ** 31 }, /queryTimeoutMs must be/],
      [{ coordinator, maxEventsPerTx: -1 }, /maxEventsPerTx must be/],
      [
        { coordinator: { id: 'bad id', address: '127.0.0.1:1' } },
        /coordinator.id: invalid coordinator id 'bad id'/,
      ],
    ];
    for (const [options, message] of bad) {
      assert.throws(
        () => createDmtp(options),
        (e: Error) => e instanceof InvalidArgumentError && message.test(e.message),
      );
    }
    // Before, 15 minutes passed here and every participant refused the transaction's first call.
    await assert.rejects(
      dmtp.begin({ timeoutMs: 15 * 60_000 }),
      /timeoutMs must be a whole number in 1-600000/,
    );
  });

  it('refuses, without sending it, a call made in a transaction whose block has ended', async () => {
    let sent = 0;
    let late: Promise<unknown> | undefined;
    const err = await dmtp
      .transaction(async () => {
        // A sibling task still running when the block fails (Promise.all rejects at the first failure).
        late = sleep(20).then(() =>
          txClientMiddleware(outgoing(), async () => {
            sent++;
            return { response: {}, trailers: new Metadata(), instanceId: 'x' };
          }),
        );
        throw new Error('first call failed');
      })
      .catch((e: unknown) => e);
    assert.match((err as Error).message, /first call failed/);
    await assert.rejects(late!, (e: Error & { code?: number }) => {
      assert.equal(e.code, 9, 'FAILED_PRECONDITION');
      assert.match(e.message, /is ending .* not sent/);
      return true;
    });
    assert.equal(sent, 0, 'never sent: without the context its work would outlive the rollback');
  });

  it('commit waits for a call still in flight and names its branch', async () => {
    const ref = {
      branchId: 'db@i9',
      service: 'bank',
      instanceId: 'i9',
      address: '127.0.0.1:2',
      resource: 'db',
    };
    // The coordinator is not reached here: its client records what Commit would carry (a test stub).
    const clients = (
      dmtp as unknown as { clients: { commit: (a: string, r: { branches: unknown[] }) => unknown } }
    ).clients;
    const real = clients.commit;
    const carried: unknown[][] = [];
    clients.commit = async (_a, r) => (carried.push(r.branches), { state: 4, abortReason: '' });
    let answered = false;
    try {
      const out = await dmtp.transaction(async () => {
        // Started, not awaited: the block returns while the call waits for its answer.
        void txClientMiddleware(outgoing(), async () => {
          await sleep(30);
          answered = true;
          const trailers = new Metadata();
          trailers.add(MD.branch, JSON.stringify(ref));
          return { response: {}, trailers, instanceId: 'i9' };
        });
        return 'done';
      });
      assert.equal(out, 'done');
      assert.ok(answered, 'the call was answered before Commit was sent');
      assert.deepEqual(carried, [[ref]]);
    } finally {
      clients.commit = real;
    }
  });
});
