// A business handler that never settles (it awaits something with no timeout) must not hold its branch's lock for
// good: at the branch's deadline plus deadlineGraceMs, or once stop() waited stopGraceMs, the participant abandons
// it — the call fails ABORTED, the branch rolls back (the resource told the call was abandoned), Prepare and
// Rollback are answered — while the handler runs on, shut out of its branch. Fakes: a recording resource, a
// ManualClock, hand-built IncomingCalls, the real file branch store in a temporary folder.
import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Metadata, status } from '@grpc/grpc-js';
import { Pool, type PoolClient } from 'pg';
import { FailedPreconditionError, InvalidArgumentError, ManualClock, MD, mintXid } from '../../../common';
import type { CallResult, IncomingCall, OutgoingCall } from '../../../rpc/middleware';
import {
  BranchRolledBackError,
  BusinessCallAbandonedError,
  currentBranch,
  defineResource,
  FileBranchStore,
  Participant,
  PARTICIPANT_DEFAULTS,
  PgResource,
  txClientMiddleware,
  txServerMiddleware,
  writeContext,
} from '../../../txapi';
import { addBranchTrailer } from '../../../txapi/tx-metadata';
import type { BranchRecord } from '../../../txapi/branch-store';
import { within } from '../../support/coordinator-wait';
import { nameFor } from '../../support/env';

interface FakeHandle {
  id: number;
}

/** A promise the test settles by hand (a handler's external system that does not answer until told). */
interface Gate<T> {
  promise: Promise<T>;
  resolve(v: T): void;
  reject(e: unknown): void;
}

function gate<T = void>(): Gate<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

const settle = () => new Promise((r) => setTimeout(r, 20));

describe('Participant: a business call that never settles is abandoned', () => {
  let dir: string;
  let clock: ManualClock;
  let p: Participant;
  let calls: string[];
  /** The branch data each rollback was given (a reservation's keys, say). */
  let rollbackData: unknown[];
  let warnings: string[];
  /** When set, begin() says it was entered and waits to be let through. */
  /** This many rollbacks fail first (the branch stays doomed, its record `registered`). */
  let failRollbacks = 0;
  let slowBegin: { entered: Gate<void>; through: Gate<void> } | undefined;
  const stopGraceMs = 2_000;

  beforeEach(async function () {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), `${nameFor(this, 30)}-`));
    clock = new ManualClock(Date.now());
    calls = [];
    rollbackData = [];
    warnings = [];
    slowBegin = undefined;
    failRollbacks = 0;
    let n = 0;
    const resource = defineResource<FakeHandle>({
      name: 'db',
      volatileWork: true,
      begin: async () => {
        slowBegin?.entered.resolve();
        await slowBegin?.through.promise;
        return { id: ++n };
      },
      prepare: async (_b, h) => (calls.push(`prepare ${h?.id}`), { vote: 'prepared' }),
      commit: async () => ({ committed: true }),
      rollback: async (b, h, _reason, info) => {
        if (failRollbacks-- > 0) throw new Error('legacy system down');
        rollbackData.push(b.data);
        calls.push(`rollback ${h?.id}${info?.abandoned ? ' abandoned' : ''}`);
      },
    });
    p = new Participant({
      service: 'shop',
      instanceId: 'shop-1',
      address: '127.0.0.1:5000',
      store: new FileBranchStore({ path: path.join(dir, 'b.jsonl') }),
      resources: [resource],
      clock,
      recoveryIntervalMs: 3_600_000,
      stopGraceMs,
    });
    p.log.warn = (msg) => void warnings.push(msg); // captured (and kept off the test output)
    await p.start();
  });

  afterEach(async () => {
    const stopping = p.stop(); // a test's stuck call, if any, is abandoned once the grace passes
    clock.advance(stopGraceMs);
    await within(stopping, 'stop');
    await fs.rm(dir, { recursive: true, force: true });
  });

  const timeoutMs = 1_000;
  const ctxFor = (ms = timeoutMs) => ({
    xid: mintXid('coord-1', clock.now()),
    coordinatorAddress: '127.0.0.1:7000',
    deadlineAtMs: clock.now() + ms,
  });
  const callIn = (ctx: ReturnType<typeof ctxFor>): IncomingCall => {
    const md = new Metadata();
    writeContext(md, ctx);
    return {
      method: '/shop.Shop/Order',
      request: {},
      metadata: md,
      deadline: Infinity,
      trailers: new Metadata(),
      signal: new AbortController().signal,
      peer: 'test',
    };
  };
  const branchOf = (ctx: ReturnType<typeof ctxFor>) => ({ xid: ctx.xid, branchId: 'db@shop-1' });
  const pastDeadline = () => clock.advance(timeoutMs + p.config.deadlineGraceMs + 1);

  /**
   * A call whose handler, once in its branch, awaits `stuck` (never settled unless the test does): `reached`
   * resolves when it waits; `after` is what it does once `stuck` settles (its late look-ups, say).
   */
  function stuckCall<T>(ctx: ReturnType<typeof ctxFor>, stuck: Promise<T>, after?: () => unknown) {
    const reached = gate();
    const call = txServerMiddleware(p)(callIn(ctx), async () => {
      currentBranch('db');
      reached.resolve();
      await stuck;
      return after?.();
    });
    const result = call.then(
      (v) => ({ ok: true as const, v }),
      (err: unknown) => ({ ok: false as const, err }),
    );
    return { reached: reached.promise, result };
  }

  it('at the deadline plus grace: the call fails ABORTED naming its branch, Rollback and Prepare behind it are answered', async () => {
    const ctx = ctxFor();
    const key = branchOf(ctx);
    const call = stuckCall(ctx, new Promise<never>(() => undefined)); // never settles
    await within(call.reached, 'the handler to start');
    // The coordinator's Rollback and Prepare arrive while the handler holds the branch: they wait behind it.
    const rollback = p.rollback(key, 'db', 'coordinator aborted: prepare timed out');
    const prepare = p.prepare(key, 'db');
    await settle();
    assert.equal((await p.store.get(key))?.status, 'registered', 'nothing can act on the branch yet');
    pastDeadline();
    const r = await within(call.result, 'the abandoned call to fail');
    assert.equal(r.ok, false);
    const err = (r as { err: unknown }).err;
    assert.ok(err instanceof BusinessCallAbandonedError, String(err));
    assert.equal(err.code, status.ABORTED);
    assert.deepEqual(err.details, key);
    assert.match(err.message, /branch db@shop-1 of .*: its business call was abandoned, still running when/);
    await within(rollback, 'the Rollback behind the stuck call');
    const vote = await within(prepare, 'the Prepare behind the stuck call');
    assert.equal(vote.vote, 'abort');
    assert.match(vote.vote === 'abort' ? vote.reason : '', /abandoned/);
    assert.equal((await p.store.get(key))?.status, 'rolled_back');
    assert.deepEqual(calls, ['rollback 1 abandoned'], 'rolled back once, the resource told why');
    // A later call of the transaction is refused, and a repeated Rollback acks.
    // (Straight to the participant: the middleware would refuse it first, its transaction being past its deadline.)
    const late = await p.withBranch(ctx, 'db', async () => 'ran').catch((e: unknown) => e);
    assert.ok(late instanceof BranchRolledBackError, String(late));
    await within(p.rollback(key, 'db', 'again'), 'a repeated Rollback');
    assert.ok(warnings.includes('abandoned a business call that was still running'));
  });

  it('shuts the handler out of its branch: its late currentBranch() throws, its result is only logged', async () => {
    const ctx = ctxFor();
    const stuck = gate<string>();
    const late: unknown[] = [];
    const call = stuckCall(ctx, stuck.promise, () => {
      late.push(
        (() => {
          try {
            return currentBranch('db');
          } catch (e) {
            return e;
          }
        })(),
      );
      return 'done at last';
    });
    await within(call.reached, 'the handler to start');
    pastDeadline();
    assert.equal((await within(call.result, 'the abandoned call')).ok, false);
    assert.equal(late.length, 0, 'the handler still waits');
    stuck.resolve('the external system answered');
    await settle();
    assert.equal(late.length, 1, 'the handler ran on after being abandoned');
    const [lookUp] = late;
    assert.ok(lookUp instanceof FailedPreconditionError, String(lookUp));
    assert.equal(lookUp.code, status.FAILED_PRECONDITION);
    assert.match(lookUp.message, /was abandoned/);
    assert.deepEqual(lookUp.details, branchOf(ctx));
    assert.ok(warnings.includes('an abandoned business call returned at last; its result is ignored'));
  });

  it("refuses an abandoned handler's record(), even while its branch's rollback is still to succeed", async () => {
    failRollbacks = 2; // the abandoned call's and the deadline's: the branch stays doomed, still `registered`
    const ctx = ctxFor();
    const stuck = gate();
    let recorded: unknown;
    const reached = gate();
    const call = txServerMiddleware(p)(callIn(ctx), async () => {
      const branch = currentBranch('db');
      reached.resolve();
      await stuck.promise;
      recorded = await branch.record({ reservation: 'r-1' }).then(
        () => 'recorded',
        (e: unknown) => e,
      );
      return 'done at last';
    });
    const result = call.catch((e: unknown) => e);
    await within(reached.promise, 'the handler to start');
    pastDeadline();
    assert.ok((await within(result, 'the abandoned call')) instanceof BusinessCallAbandonedError);
    stuck.resolve();
    await settle();
    assert.ok(recorded instanceof FailedPreconditionError, String(recorded));
    assert.match(recorded.message, /was abandoned/);
    const rec = await p.store.get(branchOf(ctx));
    assert.equal(rec?.status, 'registered', 'doomed: its rollback is tried again later');
    assert.deepEqual(rec?.data, {}, 'nothing recorded that the rollback (cancel) would not see');
    assert.equal((await p.prepare(branchOf(ctx), 'db')).vote, 'abort');
    assert.deepEqual(calls, ['rollback 1 abandoned'], 'the retry, still told the handle may be in use');
  });

  it('a record() under way when the call is abandoned lands before the rollback, which then undoes what it names', async () => {
    const ctx = ctxFor();
    const landing = gate();
    const setData = p.store.setData.bind(p.store);
    p.store.setData = async (key, data) => {
      await landing.promise; // the write is on the wire when the call is abandoned
      return setData(key, data);
    };
    let recorded: unknown;
    const reached = gate();
    const call = txServerMiddleware(p)(callIn(ctx), async () => {
      reached.resolve();
      recorded = await currentBranch('db')
        .record({ reservation: 'r-1' })
        .then(
          () => 'recorded',
          (e: unknown) => e,
        );
      if (recorded === 'recorded') reservedAtLegacy = true; // what a handler does once its key is recorded
    });
    let reservedAtLegacy = false;
    const result = call.catch((e: unknown) => e);
    await within(reached.promise, 'the handler to start');
    pastDeadline();
    await settle();
    landing.resolve();
    assert.ok((await within(result, 'the abandoned call')) instanceof BusinessCallAbandonedError);
    await settle();
    assert.deepEqual(
      rollbackData,
      [{ reservation: 'r-1' }],
      'the rollback saw the recorded key (cancel gets it)',
    );
    assert.ok(recorded instanceof FailedPreconditionError, `record() answered ${String(recorded)}`);
    assert.equal(reservedAtLegacy, false, 'the handler was told to stop before reserving');
  });

  it('reports the onward branches of an abandoned call as failed and refuses its later onward calls', async () => {
    const ctx = ctxFor();
    const incoming = callIn(ctx);
    const bank = {
      branchId: 'acct@bank-1',
      service: 'bank',
      instanceId: 'bank-1',
      address: '127.0.0.1:6000',
      resource: 'acct',
      incarnation: 'inc-b',
    };
    const sent: string[] = [];
    const onward = (what: string) =>
      txClientMiddleware(
        {
          service: 'bank',
          method: `/bank.Bank/${what}`,
          request: {},
          metadata: new Metadata(),
          deadline: Infinity,
          idempotent: false,
        } as OutgoingCall,
        async (): Promise<CallResult> => {
          sent.push(what);
          const trailers = new Metadata();
          addBranchTrailer(trailers, bank);
          return { response: {}, trailers, instanceId: 'bank-1' };
        },
      );
    const stuck = gate();
    const reached = gate();
    let late: unknown;
    const call = txServerMiddleware(p)(incoming, async () => {
      await onward('Debit');
      reached.resolve();
      await stuck.promise;
      late = await onward('Credit').then(
        () => 'sent',
        (e: unknown) => e,
      );
    });
    const result = call.catch((e: unknown) => e);
    await within(reached.promise, 'the handler to make its onward call and get stuck');
    pastDeadline();
    assert.ok((await within(result, 'the abandoned call')) instanceof BusinessCallAbandonedError);
    // Without the report the caller would keep the bank's branch, with half of this call's work, and commit it.
    const failed = incoming.trailers.get(MD.failedBranch).map((v) => JSON.parse(String(v)).branchId);
    assert.deepEqual(failed, ['acct@bank-1']);
    stuck.resolve();
    await settle();
    assert.ok(late instanceof Error, `the late onward call was ${String(late)}`);
    assert.deepEqual(sent, ['Debit'], 'the late onward call was never sent');
  });

  it('a failed later call whose branch record cannot be read is still never prepared', async () => {
    const ctx = ctxFor();
    await p.withBranch(ctx, 'db', async () => 'first call');
    const get = p.store.get.bind(p.store);
    let failGet = false;
    p.store.get = async (key) => {
      if (failGet) {
        failGet = false;
        throw new Error('store unreachable');
      }
      return get(key);
    };
    const second = await p
      .withBranch(ctx, 'db', async () => {
        failGet = true; // the failure path's read of the record fails
        throw new Error('failed halfway');
      })
      .catch((e: unknown) => e);
    assert.ok(second instanceof Error);
    const vote = await p.prepare(branchOf(ctx), 'db');
    assert.equal(vote.vote, 'abort', 'the failed call did half its work in the branch');
  });

  it('leaves no unhandled rejection when an abandoned handler later rejects', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => void unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const ctx = ctxFor();
      const stuck = gate();
      const call = stuckCall(ctx, stuck.promise);
      await within(call.reached, 'the handler to start');
      pastDeadline();
      assert.equal((await within(call.result, 'the abandoned call')).ok, false);
      stuck.reject(new Error('socket hang up, at last'));
      await settle();
      await settle();
      assert.deepEqual(unhandled, []);
      assert.ok(warnings.includes('an abandoned business call failed at last; its error is ignored'));
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it("a resource's begin still under way at the deadline plus grace: the call fails then, its late handle is rolled back", async () => {
    slowBegin = { entered: gate(), through: gate() };
    const ctx = ctxFor();
    let ran = false;
    const call = txServerMiddleware(p)(callIn(ctx), async () => void (ran = true)).catch((e: unknown) => e);
    await within(slowBegin.entered.promise, 'begin'); // the branch is registered, its deadline timer armed
    pastDeadline();
    // Before, the call (and the branch's lock, and stop()) waited for the begin for as long as it took: for good.
    const err = await within(call, 'the call, its begin still under way');
    assert.ok(err instanceof BusinessCallAbandonedError, String(err));
    assert.match(err.message, /abandoned before its handler ran/);
    assert.equal((await p.store.get(branchOf(ctx)))?.status, 'rolled_back');
    assert.deepEqual(calls, ['rollback undefined'], 'the branch rolled back with no handle yet');
    slowBegin.through.resolve(); // the begin returns at last
    await settle();
    assert.equal(ran, false);
    assert.deepEqual(calls, ['rollback undefined', 'rollback 1'], 'its handle rolled back when it came');
    assert.ok(
      warnings.includes("a resource's begin returned after its call was abandoned; rolling its work back"),
    );
  });

  it("stop() does not wait for good for a resource's begin that never returns", async () => {
    slowBegin = { entered: gate(), through: gate() }; // never let through
    const ctx = ctxFor(60_000); // its deadline far off: stop, not the deadline, abandons it
    const call = txServerMiddleware(p)(callIn(ctx), async () => 'ran').catch((e: unknown) => e);
    await within(slowBegin.entered.promise, 'begin');
    let stopped = false;
    const stopping = p.stop().then(() => (stopped = true));
    await settle();
    assert.equal(stopped, false, 'stop waits for the begin, up to its grace');
    clock.advance(stopGraceMs);
    await within(stopping, 'stop, once its grace passed');
    const err = await within(call, 'the call');
    assert.ok(err instanceof BusinessCallAbandonedError, String(err));
    assert.match(String(err), /stopGraceMs \(2000 ms\)/);
    assert.deepEqual(calls, ['rollback undefined']);
  });

  it('stop() waits stopGraceMs for calls under way: one that ends in time answers, a stuck one is abandoned', async () => {
    const quick = gate<string>();
    const a = stuckCall(ctxFor(60_000), quick.promise, () => 'answered in time');
    const ctxB = ctxFor(60_000); // its deadline far off: stop, not the deadline, abandons it
    const b = stuckCall(ctxB, new Promise<never>(() => undefined));
    await within(Promise.all([a.reached, b.reached]), 'both handlers to start');
    let stopped = false;
    const stopping = p.stop().then(() => (stopped = true));
    await settle();
    quick.resolve('ok');
    assert.deepEqual(await within(a.result, 'the call that ends in time'), {
      ok: true,
      v: 'answered in time',
    });
    await settle();
    assert.equal(stopped, false, 'stop waits for the stuck call, up to its grace');
    clock.advance(stopGraceMs);
    await within(stopping, 'stop, once its grace passed');
    const r = await within(b.result, 'the stuck call');
    assert.ok(!r.ok && r.err instanceof BusinessCallAbandonedError, String(!r.ok && r.err));
    assert.match(String(r.err), /stopGraceMs \(2000 ms\)/);
    const store = new FileBranchStore({ path: path.join(dir, 'b.jsonl') }); // what the stopped one recorded
    await store.open();
    try {
      assert.equal((await store.get(branchOf(ctxB)))?.status, 'rolled_back');
    } finally {
      await store.close();
    }
    // The call that ended in time had its branch rolled back by stop's sweep, as before; the stuck one as abandoned.
    assert.equal(calls.length, 2, calls.join(', '));
    assert.equal(calls.filter((c) => c.endsWith(' abandoned')).length, 1, calls.join(', '));
    assert.equal(clock.pending(), 0, 'no timer left behind');
  });

  it('stopGraceMs defaults to 5000 ms and refuses 0, a negative number or NaN', () => {
    assert.equal(PARTICIPANT_DEFAULTS.stopGraceMs, 5_000);
    assert.equal(p.config.stopGraceMs, stopGraceMs);
    for (const bad of [0, -1, Number.NaN, 1.5]) {
      assert.throws(
        () =>
          new Participant({
            service: 's',
            instanceId: 'i1',
            address: '127.0.0.1:1',
            store: p.store,
            resources: [],
            stopGraceMs: bad,
          }),
        (e: Error) =>
          e instanceof InvalidArgumentError && /stopGraceMs must be a whole number/.test(e.message),
        String(bad),
      );
    }
  });
});

describe('pgResource: rollback of an abandoned call', () => {
  it('closes the connection without a statement (a ROLLBACK would queue behind the stuck query)', async () => {
    const pool = new Pool({ connectionString: 'postgres://nobody@127.0.0.1:1/none', max: 1 }); // never connects
    const r = new PgResource({ name: 'db', pool, phase2Pool: pool });
    const done: string[] = [];
    const client = {
      query: () => (done.push('query'), new Promise<never>(() => undefined)), // busy with the stuck query
      release: (err?: unknown) =>
        void done.push(`release ${err === true || err instanceof Error ? 'destroyed' : 'pooled'}`),
      on: () => client,
      removeListener: () => client,
    } as unknown as PoolClient;
    const branch = { xid: mintXid('c1'), branchId: 'db@i1' } as BranchRecord;
    await within(r.rollback(branch, client, 'deadline', { abandoned: true }), 'the rollback');
    assert.deepEqual(done, ['release destroyed']);
    await pool.end();
  });
});
