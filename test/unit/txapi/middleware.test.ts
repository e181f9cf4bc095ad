// The server middleware and the participant's branch life with fakes: a recording resource instead of a
// database, a ManualClock instead of sleeping, hand-built IncomingCalls instead of a server. The branch store is
// the real file store (in a temporary folder).
import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Metadata, status } from '@grpc/grpc-js';
import {
  DeadlineExceededError,
  DmtpError,
  FailedPreconditionError,
  ManualClock,
  MD,
  mintXid,
} from '../../../common';
import { DEFAULT_PER_TURN } from '../../../common/deadline-queue';
import { markAnswered } from '../../../rpc/not-sent';
import { withTrailers } from '../../../rpc/transport';
import type { IncomingCall } from '../../../rpc/middleware';
import {
  BranchRolledBackError,
  currentBranch,
  currentTx,
  defineResource,
  FileBranchStore,
  Participant,
  ReentrantBranchCallError,
  ResourceFailedError,
  txClientMiddleware,
  txServerMiddleware,
  writeContext,
  type ParticipantOptions,
} from '../../../txapi';
import { runInTx, type TxContext } from '../../../txapi/context';
import type { CoordinatorClients } from '../../../txapi/coordinator-client';
import { recoverInDoubt } from '../../../txapi/participant-recovery';
import { Outcome } from '../../../proto/gen/dmtp/v1/types';
import { nameFor } from '../../support/env';

interface FakeHandle {
  id: number;
}

function fakeResource() {
  const calls: string[] = [];
  let n = 0;
  const resource = defineResource<FakeHandle>({
    name: 'db',
    begin: async (b) => {
      calls.push(`begin ${b.branchId}`);
      return { id: ++n };
    },
    prepare: async (_b, h) => {
      calls.push(`prepare ${h?.id}`);
      return { vote: 'prepared' };
    },
    commit: async (_b, h, onePhase) => {
      calls.push(`commit ${h?.id} ${onePhase}`);
      return { committed: true };
    },
    rollback: async (_b, h) => {
      calls.push(`rollback ${h?.id}`);
    },
  });
  return { resource, calls };
}

const codeOf = (err: unknown) => (err as DmtpError).code;

describe('txapi server middleware and participant (fakes)', () => {
  let dir: string;
  let clock: ManualClock;
  let p: Participant;
  let fake: ReturnType<typeof fakeResource>;

  beforeEach(async function () {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), `${nameFor(this, 30)}-`));
    clock = new ManualClock(Date.now());
    fake = fakeResource();
    p = new Participant({
      service: 'bank',
      instanceId: 'bank-1',
      address: '127.0.0.1:5000',
      store: new FileBranchStore({ path: path.join(dir, 'b.jsonl') }),
      resources: [fake.resource],
      clock,
      recoveryIntervalMs: 3_600_000,
    });
    await p.start();
  });

  afterEach(async () => {
    await p.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  const mw = () => txServerMiddleware(p);
  /** A participant beside `p`: instance `<service>-1`, its own store and resources, the same clock. */
  const participantOf = (
    service: string,
    port: number,
    store: ParticipantOptions['store'],
    resources: ParticipantOptions['resources'],
  ) =>
    new Participant({
      service,
      instanceId: `${service}-1`,
      address: `127.0.0.1:${port}`,
      store,
      resources,
      clock,
      recoveryIntervalMs: 3_600_000,
    });
  const ctxFor = (xid = mintXid('coord-1', clock.now()), timeoutMs = 5_000) => ({
    xid,
    coordinatorAddress: '127.0.0.1:7000',
    deadlineAtMs: clock.now() + timeoutMs,
  });
  const callWith = (md: Metadata): IncomingCall => ({
    method: '/bank.Bank/Debit',
    request: {},
    metadata: md,
    deadline: Infinity,
    trailers: new Metadata(),
    signal: new AbortController().signal,
    peer: 'test',
  });
  const callIn = (ctx: ReturnType<typeof ctxFor>) => {
    const md = new Metadata();
    writeContext(md, ctx);
    return callWith(md);
  };
  const settle = () => new Promise((r) => setTimeout(r, 20));
  /** A call through txClientMiddleware to `service`, answered by `next` (in whatever transaction is current). */
  const clientCall = (service: string, next: Parameters<typeof txClientMiddleware>[1]) =>
    txClientMiddleware(
      {
        service,
        method: `/${service}.S/M`,
        request: {},
        metadata: new Metadata(),
        deadline: Infinity,
        idempotent: false,
      },
      next,
    );

  it('passes a call without transaction context through untouched', async () => {
    const call = callWith(new Metadata());
    assert.equal(await mw()(call, async () => 'ok'), 'ok');
    assert.deepEqual(call.trailers.get(MD.branch), []);
    assert.deepEqual(fake.calls, []);
  });

  it('enlists on the first call, shows the branch to the handler, reports it in the trailer', async () => {
    const ctx = ctxFor();
    const call = callIn(ctx);
    const res = await mw()(call, async () => {
      assert.equal(currentTx()?.xid, ctx.xid);
      return (currentBranch<FakeHandle>('db').handle as FakeHandle).id;
    });
    assert.equal(res, 1);
    const [ref] = call.trailers.get(MD.branch).map((v) => JSON.parse(String(v)));
    assert.deepEqual(ref, {
      incarnation: p.incarnation,
      branchId: 'db@bank-1',
      service: 'bank',
      instanceId: 'bank-1',
      address: '127.0.0.1:5000',
      resource: 'db',
    });
    // a second call of the same transaction works in the same branch
    await mw()(callIn(ctx), async () => assert.equal(currentBranch<FakeHandle>().handle.id, 1));
    assert.deepEqual(fake.calls, ['begin db@bank-1']);
  });

  it('marks an answer to a call in a transaction taken when it reports no branch (a method with no resource)', async () => {
    const router = new Participant({
      service: 'gateway',
      instanceId: 'gateway-1',
      address: '127.0.0.1:5001',
      store: new FileBranchStore({ path: path.join(dir, 'g.jsonl') }),
      resources: [fake.resource],
      resourceFor: (m) => (m === '/bank.Bank/Debit' ? 'db' : undefined),
      clock,
      recoveryIntervalMs: 3_600_000,
    });
    await router.start();
    try {
      const routed = { ...callIn(ctxFor()), method: '/gateway.Gw/Route' };
      assert.equal(await txServerMiddleware(router)(routed, async () => 'routed'), 'routed');
      assert.deepEqual(routed.trailers.get(MD.branch), [], 'no resource: no branch');
      assert.deepEqual(routed.trailers.get(MD.taken), ['1'], 'but the context was taken, not ignored');
      const enlisted = callIn(ctxFor());
      await txServerMiddleware(router)(enlisted, async () => 'ok');
      assert.equal(enlisted.trailers.get(MD.branch).length, 1, 'in a branch: the branch says it');
      const outside = callWith(new Metadata());
      await txServerMiddleware(router)(outside, async () => 'ok');
      assert.deepEqual(outside.trailers.get(MD.taken), [], 'no context, nothing taken');
    } finally {
      await router.stop();
    }
  });

  it('the caller warns, once per method, of an answer with neither a branch nor the context taken', async () => {
    const said: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string) => {
      if (/ignored it/.test(String(chunk))) said.push(String(JSON.parse(String(chunk)).method));
      return true;
    }) as typeof process.stderr.write;
    const answer = (taken: boolean) => async () => {
      const trailers = new Metadata();
      if (taken) trailers.set(MD.taken, '1');
      return { response: 'ok', trailers, instanceId: 'i-1' };
    };
    const tag = Math.random().toString(36).slice(2, 8);
    try {
      await runInTx({ ...ctxFor(), role: 'initiator', branches: [], events: [], active: true }, async () => {
        await clientCall(`taken${tag}`, answer(true)); // a participant's method with no resource
        await clientCall(`plain${tag}`, answer(false)); // a server that ignored the context
        await clientCall(`plain${tag}`, answer(false)); // the same method again: said once
      });
      await clientCall(`outside${tag}`, answer(false)); // no transaction: nothing to ignore
    } finally {
      process.stderr.write = write;
    }
    assert.deepEqual(said, [`/plain${tag}.S/M`]);
  });

  it("reports an onward call's uncertain failure as dmtp-rollback-only, and the initiator takes it", async () => {
    const ctx = ctxFor();
    const call = callIn(ctx);
    await mw()(call, async () => {
      // The handler's onward call to another participant instance timed out after it was sent; the handler goes on.
      const onward = currentTx()!;
      onward.branches.push({
        branchId: 'db@stock-1',
        service: 'stock',
        instanceId: 'stock-1',
        address: '127.0.0.1:6',
        resource: 'db',
      });
      await clientCall('stock', async () => {
        throw new DeadlineExceededError('too slow', {
          details: { service: 'stock', instanceId: 'stock-1' },
        });
      }).catch(() => undefined);
      return 'ok';
    });
    const [why] = call.trailers.get(MD.rollbackOnly);
    assert.match(String(why), /stock instance stock-1 failed after it was sent .* cannot be told/);
    // The initiator reading that answer is rollback-only too.
    const initiator: TxContext = { ...ctxFor(), role: 'initiator', branches: [], events: [], active: true };
    await runInTx(initiator, () =>
      clientCall('bank', async () => ({ response: {}, trailers: call.trailers, instanceId: 'bank-1' })),
    );
    assert.match(String(initiator.rollbackOnly), /^a participant reported: a call to stock instance stock-1/);
  });

  it("reports a failed handler's onward branches as failed; the initiator commits none of their work", async () => {
    // Before, the error answer carried no trailers the initiator read: a handler that debited through an onward
    // call and then failed left that debit in the onward branch, and a transaction holding the branch committed it.
    const stock = { branchId: 'db@stock-1', service: 'stock', instanceId: 'stock-1', address: '127.0.0.1:6' };
    const stockRef = { ...stock, resource: 'db' };
    const failing = async () => {
      const call = callIn(ctxFor());
      const err = await mw()(call, async () => {
        await clientCall('stock', async () => {
          const trailers = new Metadata();
          trailers.add(MD.branch, JSON.stringify(stockRef));
          return { response: {}, trailers, instanceId: 'stock-1' };
        });
        throw new FailedPreconditionError('limit exceeded');
      }).catch((e: unknown) => e as DmtpError);
      assert.ok(err instanceof FailedPreconditionError);
      assert.deepEqual(call.trailers.get(MD.branch), [], 'no branch reported as done');
      assert.deepEqual(
        call.trailers.get(MD.failedBranch).map((v) => JSON.parse(String(v))),
        [stockRef],
      );
      return withTrailers(markAnswered(err), call.trailers);
    };
    const initiator = (): TxContext => ({
      ...ctxFor(),
      role: 'initiator',
      branches: [],
      events: [],
      active: true,
    });
    const answered = (trailers?: Metadata) => async () => ({
      response: {},
      trailers: trailers ?? new Metadata(),
      instanceId: 'x',
    });
    const stockTrailers = () => {
      const md = new Metadata();
      md.add(MD.branch, JSON.stringify(stockRef));
      return md;
    };
    const fail = async () => {
      const err = await failing();
      return async () => Promise.reject(err);
    };

    // The initiator already holds the onward branch (an earlier call): rollback-only at once.
    const holds = initiator();
    await runInTx(holds, () => clientCall('stock', answered(stockTrailers())));
    await assert.rejects(
      runInTx(holds, async () => clientCall('bank', await fail())),
      FailedPreconditionError,
    );
    assert.match(
      String(holds.rollbackOnly),
      /^the call \/bank\.S\/M failed \(limit exceeded\) after .* stock instance stock-1 sits in branch db@stock-1/,
    );
    // A later call reports the branch: rollback-only then.
    const later = initiator();
    await assert.rejects(
      runInTx(later, async () => clientCall('bank', await fail())),
      FailedPreconditionError,
    );
    assert.equal(later.rollbackOnly, undefined, 'no branch of the transaction holds that work yet');
    await runInTx(later, () => clientCall('stock', answered(stockTrailers())));
    assert.match(String(later.rollbackOnly), /sits in branch db@stock-1/);
    // No call reports it: the transaction goes on without it (the branch rolls back at its deadline).
    const apart = initiator();
    await assert.rejects(
      runInTx(apart, async () => clientCall('bank', await fail())),
      FailedPreconditionError,
    );
    await runInTx(apart, () => clientCall('bank', answered()));
    assert.equal(apart.rollbackOnly, undefined);
    assert.deepEqual(apart.branches, []);
    // A participant that caught the failure passes the failed branch on in its own (successful) answer.
    const relay = callIn(ctxFor());
    await mw()(relay, async () => {
      await clientCall('mid', await fail()).catch(() => undefined);
      return 'ok';
    });
    assert.deepEqual(
      relay.trailers.get(MD.failedBranch).map((v) => JSON.parse(String(v))),
      [stockRef],
    );
    const top = initiator();
    await runInTx(top, () => clientCall('stock', answered(stockTrailers())));
    await runInTx(top, () => clientCall('bank', answered(relay.trailers)));
    assert.match(String(top.rollbackOnly), /sits in branch db@stock-1/);
  });

  it('undoes a call whose caller gave up while its handler ran: the branch does not keep that work', async () => {
    // Before, a later call that timed out at the caller still left its work in the branch (the earlier call
    // had reported it), and a plain grpc-js caller that caught the timeout committed it.
    const ctx = ctxFor();
    await mw()(callIn(ctx), async () => 'first call');
    const late = callIn(ctx);
    const gone = new AbortController();
    late.signal = gone.signal;
    await assert.rejects(
      mw()(late, async () => {
        gone.abort(new DeadlineExceededError('deadline passed'));
        return 'done too late';
      }),
      DeadlineExceededError,
    );
    assert.deepEqual(late.trailers.get(MD.branch), [], 'no branch reported for it');
    assert.deepEqual(
      fake.calls,
      ['begin db@bank-1', 'rollback 1'],
      'no undo for one call here: the branch rolled back',
    );
  });

  it('refuses malformed, forged and expired context with clear statuses', async () => {
    const ok = ctxFor();
    const bad = async (mutate: (md: Metadata) => void) => {
      const md = new Metadata();
      writeContext(md, ok);
      mutate(md);
      return mw()(callWith(md), async () => 'ran').catch((e: unknown) => e);
    };
    assert.equal(codeOf(await bad((md) => md.set(MD.xid, 'not an xid'))), status.INVALID_ARGUMENT);
    assert.equal(
      codeOf(await bad((md) => md.set(MD.coordinator, 'evil host;drop'))),
      status.INVALID_ARGUMENT,
    );
    assert.equal(codeOf(await bad((md) => md.set(MD.deadline, '12abc'))), status.INVALID_ARGUMENT);
    // forged: a deadline a year after the xid was minted, an xid minted in the future
    assert.equal(
      codeOf(await bad((md) => md.set(MD.deadline, String(clock.now() + 365 * 86_400_000)))),
      status.INVALID_ARGUMENT,
    );
    const future = mintXid('coord-1', clock.now() + 3_600_000);
    assert.equal(
      codeOf(
        await bad((md) => (md.set(MD.xid, future), md.set(MD.deadline, String(clock.now() + 3_601_000)))),
      ),
      status.INVALID_ARGUMENT,
    );
    // the branches held up the chain: JSON, an array, at most MAX_HELD_BRANCHES branch ids
    for (const held of ['not json', '{"a":1}', '["ok", ""]', JSON.stringify(Array(33).fill('db@x-1'))]) {
      const refused = await bad((md) => md.set(MD.held, held));
      assert.equal(codeOf(refused), status.INVALID_ARGUMENT, held);
      assert.match((refused as Error).message, /invalid 'dmtp-held-branches'/);
    }
    const old = mintXid('coord-1', clock.now() - 10_000);
    const expired = await bad((md) => (md.set(MD.xid, old), md.set(MD.deadline, String(clock.now() - 1))));
    assert.equal(codeOf(expired), status.FAILED_PRECONDITION);
    assert.equal((expired as Error).name, 'TransactionExpiredError');
    assert.deepEqual(fake.calls, [], 'nothing enlisted');
  });

  it('onward calls carry the branches held up the chain; a call that comes back to one is refused at once', async () => {
    const ctx = ctxFor();
    const onwardMetadata = async (held?: string[]) => {
      const md = new Metadata();
      writeContext(md, { ...ctx, held });
      let sent: Metadata | undefined;
      await mw()(callWith(md), () =>
        clientCall(
          'stock',
          async (c) => (
            (sent = c.metadata),
            { response: {}, trailers: new Metadata(), instanceId: 'stock-1' }
          ),
        ),
      );
      return sent!.get(MD.held).map(String);
    };
    assert.deepEqual(await onwardMetadata(), [JSON.stringify(['db@bank-1'])], "this call's own branch");
    assert.deepEqual(await onwardMetadata(['db@stock-1']), [JSON.stringify(['db@stock-1', 'db@bank-1'])]);
    // A → stock → A again: this instance's branch is held by the outer call, which waits for this one.
    fake.calls.length = 0;
    const md = new Metadata();
    writeContext(md, { ...ctxFor(), held: ['db@bank-1', 'db@stock-1'] });
    const refused = await mw()(callWith(md), async () => 'ran').catch((e: unknown) => e as DmtpError);
    assert.ok(refused instanceof ReentrantBranchCallError, String(refused));
    assert.equal(refused.code, status.FAILED_PRECONDITION);
    assert.match(refused.message, /\(db@bank-1 → db@stock-1 → db@bank-1\)/);
    assert.deepEqual(fake.calls, [], 'nothing enlisted, nothing begun');
  });

  it('refuses a late business call after a rollback that came first (null rollback)', async () => {
    const ctx = ctxFor();
    await p.rollback({ xid: ctx.xid, branchId: 'db@bank-1' }, 'db', 'coordinator aborted');
    const err = await mw()(callIn(ctx), async () => 'ran').catch((e: unknown) => e);
    assert.ok(err instanceof BranchRolledBackError);
    assert.equal(codeOf(err), status.ABORTED);
    assert.deepEqual(await p.prepare({ xid: ctx.xid, branchId: 'db@bank-1' }, 'db'), {
      vote: 'abort',
      reason: 'coordinator aborted',
    });
    assert.deepEqual(fake.calls, []);
  });

  it('rolls back a branch that is not prepared by the deadline, then votes ABORT', async () => {
    const ctx = ctxFor(undefined, 1_000);
    await mw()(callIn(ctx), async () => 'ok');
    clock.advance(1_000 + p.config.deadlineGraceMs + 1);
    await settle();
    assert.deepEqual(fake.calls, ['begin db@bank-1', 'rollback 1']);
    const vote = await p.prepare({ xid: ctx.xid, branchId: 'db@bank-1' }, 'db');
    assert.equal(vote.vote, 'abort');
  });

  it('times every branch with one timer, and rolls back branches due together in batches, not in one turn', async () => {
    const n = DEFAULT_PER_TURN + 40;
    const deadlineAtMs = clock.now() + 1_000;
    const before = clock.pending(); // the recovery timer
    for (let i = 0; i < n; i++) {
      await mw()(callIn({ ...ctxFor(), deadlineAtMs }), async () => 'ok');
    }
    assert.equal(clock.pending(), before + 1, 'one timer for all their deadlines');
    // A deadline's rollback reads its branch first, at once (an idle branch's lock runs it in the same turn).
    const store = p.store;
    const get = store.get.bind(store);
    let reads = 0;
    store.get = (key) => (reads++, get(key));
    // Other work due at the same time (a reply, a keep-alive) stands for the I/O a long turn would hold back.
    let readsBeforeIo = -1;
    clock.setTimeout(() => (readsBeforeIo = reads), deadlineAtMs + p.config.deadlineGraceMs - clock.now());
    clock.advance(1_000 + p.config.deadlineGraceMs);
    assert.equal(readsBeforeIo, DEFAULT_PER_TURN, 'the other work ran right after the first batch');
    assert.equal(reads, n, 'then the rest, at the same time');
    for (let i = 0; i < 500 && fake.calls.filter((c) => c.startsWith('rollback')).length < n; i++)
      await settle();
    assert.equal(fake.calls.filter((c) => c.startsWith('rollback')).length, n, 'every branch rolled back');
    assert.equal(clock.pending(), before, 'no deadline timer left behind');
  });

  it('rolls back at once a branch whose first call failed', async () => {
    const ctx = ctxFor();
    await assert.rejects(
      mw()(callIn(ctx), async () => {
        throw new Error('insufficient funds');
      }),
      /insufficient funds/,
    );
    assert.deepEqual(fake.calls, ['begin db@bank-1', 'rollback 1']);
    assert.equal((await p.store.get({ xid: ctx.xid, branchId: 'db@bank-1' }))?.status, 'rolled_back');
  });

  /** A branch's first call succeeds; its second fails with `message`, which the caller sees. */
  const firstCallThenFailure = async (ctx: ReturnType<typeof ctxFor>, message: string) => {
    await mw()(callIn(ctx), async () => 'debited a');
    await assert.rejects(
      mw()(callIn(ctx), async () => {
        throw new Error(message);
      }),
      (e: Error) => e.message === message,
    );
  };

  it('a later call that fails rolls its branch back (its part cannot be taken out alone): prepare votes ABORT', async () => {
    const ctx = ctxFor();
    await firstCallThenFailure(ctx, 'insufficient funds, after an UPDATE');
    assert.deepEqual(fake.calls, ['begin db@bank-1', 'rollback 1']);
    const vote = await p.prepare({ xid: ctx.xid, branchId: 'db@bank-1' }, 'db');
    assert.equal(vote.vote, 'abort');
    assert.match(
      vote.vote === 'abort' ? vote.reason : '',
      /a later business call failed: insufficient funds/,
    );
  });

  /** Gives the fake resource per-call undo (as pgResource's savepointPerCall does); `undo` may fail. */
  const withCallUndo = (undo: () => Promise<void> = async () => undefined) => {
    fake.resource.markCall = async (_b, h) => void fake.calls.push(`mark ${h?.id}`);
    fake.resource.undoCall = async (_b, h) => {
      fake.calls.push(`undo ${h?.id}`);
      await undo();
    };
  };

  it('a resource that can undo one call: a failed later call is undone alone, the branch goes on', async () => {
    withCallUndo();
    const ctx = ctxFor();
    await firstCallThenFailure(ctx, 'insufficient funds, after an UPDATE');
    await mw()(callIn(ctx), async () => 'debited b');
    // The first call of a branch is not marked (its failure rolls the whole branch back: nothing else is in it).
    assert.deepEqual(fake.calls, ['begin db@bank-1', 'mark 1', 'undo 1', 'mark 1']);
    const vote = await p.prepare({ xid: ctx.xid, branchId: 'db@bank-1' }, 'db');
    assert.equal(vote.vote, 'prepared');
  });

  it('a resource that can undo one call: a failed first call still rolls its branch back, unmarked', async () => {
    withCallUndo();
    const ctx = ctxFor();
    await assert.rejects(
      mw()(callIn(ctx), async () => {
        throw new Error('no such account');
      }),
      /no such account/,
    );
    assert.deepEqual(fake.calls, ['begin db@bank-1', 'rollback 1']);
  });

  it('a later call whose mark fails is not undone (that would take out an earlier call): the branch rolls back', async () => {
    withCallUndo();
    fake.resource.markCall = async () => {
      fake.calls.push('mark failed');
      throw new Error('current transaction is aborted');
    };
    const ctx = ctxFor();
    await mw()(callIn(ctx), async () => 'debited a');
    let ran = false;
    await assert.rejects(
      mw()(callIn(ctx), async () => void (ran = true)),
      /current transaction is aborted/,
    );
    assert.equal(ran, false, 'the call did not run without its mark');
    assert.deepEqual(fake.calls, ['begin db@bank-1', 'mark failed', 'rollback 1']);
    const vote = await p.prepare({ xid: ctx.xid, branchId: 'db@bank-1' }, 'db');
    assert.equal(vote.vote, 'abort');
  });

  it('a failed later call whose undo fails rolls the branch back, saying why', async () => {
    withCallUndo(async () => {
      throw new Error('connection lost');
    });
    const ctx = ctxFor();
    await firstCallThenFailure(ctx, 'insufficient funds');
    assert.deepEqual(fake.calls, ['begin db@bank-1', 'mark 1', 'undo 1', 'rollback 1']);
    const vote = await p.prepare({ xid: ctx.xid, branchId: 'db@bank-1' }, 'db');
    assert.match(
      vote.vote === 'abort' ? vote.reason : '',
      /a later business call failed: insufficient funds \(and could not be undone alone: connection lost\)/,
    );
  });

  it("leaves a sibling's open branch in a shared store alone when its prepare or commit reaches this instance", async () => {
    const ctx = ctxFor();
    const sibling = { xid: ctx.xid, branchId: 'db@bank-2' };
    // What the sibling bank-2 recorded in the store both share: its branch, its work in its own process.
    await p.store.transition(sibling, 'registered', {
      resource: 'db',
      coordinatorAddress: ctx.coordinatorAddress,
      deadlineAtMs: ctx.deadlineAtMs,
    });
    await assert.rejects(p.prepare(sibling, 'db'), (e: DmtpError) => e.code === status.UNAVAILABLE);
    await assert.rejects(p.commit(sibling, 'db', true), (e: DmtpError) => e.code === status.UNAVAILABLE);
    assert.equal((await p.store.get(sibling))?.status, 'registered', 'not rolled back as work lost here');
    assert.deepEqual(fake.calls, []);
  });

  it('a stopped participant refuses calls with UNAVAILABLE and starts no work', async () => {
    await p.stop();
    const ctx = ctxFor();
    await assert.rejects(
      mw()(callIn(ctx), async () => 'never'),
      (e: Error & { code?: number }) => e.code === 14 && /bank\/bank-1 is stopped/.test(e.message),
    );
    await assert.rejects(p.prepare({ xid: ctx.xid, branchId: 'db@bank-1' }, 'db'), /is stopped/);
    assert.deepEqual(fake.calls, []);
    assert.equal(clock.pending(), 0, 'no deadline timer left behind');
  });

  it('stop() waits for a call taken just before it, then rolls back that branch too', async () => {
    const store = p.store as FileBranchStore;
    const get = store.get.bind(store);
    store.get = async (k) => (await new Promise((r) => setTimeout(r, 10)), get(k)); // one round trip, as with PostgreSQL
    await mw()(callIn(ctxFor()), async () => 'k1');
    const k2 = mw()(callIn(ctxFor()), async () => 'k2'); // taken before stop, still opening its branch
    await new Promise((r) => setTimeout(r, 1));
    await p.stop();
    assert.equal(await k2, 'k2');
    assert.deepEqual(fake.calls.filter((c) => c.startsWith('begin')).length, 2);
    assert.deepEqual(fake.calls.filter((c) => c.startsWith('rollback')).sort(), ['rollback 1', 'rollback 2']);
    assert.equal(clock.pending(), 0, 'no deadline timer left behind');
  });

  it('a lone branch of a resource that commits by prepare: a lost commit answer is asked again, never guessed', async () => {
    const calls: string[] = [];
    let lose = 1;
    const byPrepare = defineResource<FakeHandle>({
      name: 'ledger',
      onePhaseByPrepare: true,
      begin: async () => ({ id: 9 }),
      prepare: async () => (calls.push('prepare'), { vote: 'prepared' }),
      commit: async (_b, _h, onePhase) => {
        calls.push(`commit ${onePhase}`);
        if (lose-- > 0) throw new Error('Connection terminated unexpectedly'); // it may have committed
        return { committed: true };
      },
      rollback: async () => void calls.push('rollback'),
    });
    const q = participantOf('ledger', 5001, new FileBranchStore({ path: path.join(dir, 'l.jsonl') }), [
      byPrepare,
    ]);
    await q.start();
    try {
      const ctx = ctxFor();
      await txServerMiddleware(q)(callIn(ctx), async () => 'ok');
      const key = { xid: ctx.xid, branchId: 'ledger@ledger-1' };
      await assert.rejects(q.commit(key, 'ledger', true), /Connection terminated/);
      assert.equal(
        (await q.store.get(key))?.status,
        'prepared',
        'recorded prepared: asked again, not guessed',
      );
      assert.deepEqual(await q.commit(key, 'ledger', true), { committed: true });
      assert.equal((await q.store.get(key))?.status, 'committed');
      assert.deepEqual(calls, ['prepare', 'commit false', 'commit false']);
    } finally {
      await q.stop();
    }
  });

  it('a prepared-record write that failed but landed does not undo the resource: a repeated commit commits it', async () => {
    // Before, the failed write made the participant roll the prepared resource back; the coordinator asked
    // again, found the record "prepared", and reported committed work that had been rolled back.
    const calls: string[] = [];
    const byPrepare = defineResource<FakeHandle>({
      name: 'ledger',
      onePhaseByPrepare: true,
      begin: async () => ({ id: 9 }),
      prepare: async () => (calls.push('prepare'), { vote: 'prepared' }),
      commit: async (_b, _h, onePhase) => (calls.push(`commit ${onePhase}`), { committed: true }),
      rollback: async () => void calls.push('rollback'),
    });
    const store = new FileBranchStore({ path: path.join(dir, 'landed.jsonl') });
    const transition = store.transition.bind(store);
    let fail = 1;
    store.transition = async (k, status, fields, o) => {
      const r = await transition(k, status, fields, o);
      if (status === 'prepared' && fail-- > 0) throw new Error('connection lost after the write'); // it landed
      return r;
    };
    const q = participantOf('ledger', 5001, store, [byPrepare]);
    await q.start();
    try {
      const ctx = ctxFor();
      await txServerMiddleware(q)(callIn(ctx), async () => 'ok');
      const key = { xid: ctx.xid, branchId: 'ledger@ledger-1' };
      await assert.rejects(q.commit(key, 'ledger', true), /connection lost after the write/);
      assert.deepEqual(await q.commit(key, 'ledger', true), { committed: true });
      assert.deepEqual(calls, ['prepare', 'commit false'], 'committed, never rolled back');
    } finally {
      await q.stop();
    }
  });

  it('a recovery round asks a coordinator that does not answer once per wave, not once per in-doubt branch', async () => {
    // Before, every branch waited its own query timeout, one after another: start() and stop() waited for all.
    const keys = [];
    for (let i = 0; i < 40; i++) {
      const ctx = ctxFor();
      await mw()(callIn(ctx), async () => 'ok');
      const key = { xid: ctx.xid, branchId: 'db@bank-1' };
      assert.deepEqual(await p.prepare(key, 'db'), { vote: 'prepared' });
      keys.push(key);
    }
    let asked = 0;
    const silent = {
      queryOutcome: async () => {
        asked++;
        await new Promise((r) => setTimeout(r, 20));
        throw new DeadlineExceededError('no answer in time', { details: { address: '127.0.0.1:7000' } });
      },
    } as unknown as CoordinatorClients;
    clock.advance(60_000); // past the records' write time (the store keeps real time)
    await recoverInDoubt(p, silent, 0);
    assert.ok(
      asked >= 1 && asked <= 16,
      `asked ${asked} times: the address is left alone for the rest of the round once silent`,
    );
    for (const key of keys)
      assert.equal((await p.store.get(key))?.status, 'prepared', 'still in doubt, untouched');
  });

  it("a resource's phase-2 failure answers UNAVAILABLE, whatever status it carried: the coordinator asks again", async () => {
    // Before, a confirm or cancel that failed with a legacy system's gRPC status (here NOT_FOUND, ALREADY_EXISTS)
    // went out as this participant's answer: a phase-2 Commit's NOT_FOUND reads "no such branch, done", and the
    // coordinator stopped asking while the branch stayed prepared; a one-phase refusal read "not committed".
    const legacy = (code: number) => Object.assign(new Error(`legacy says ${code}`), { code, details: 'no' });
    let failWith: number | undefined;
    const calls: string[] = [];
    const flaky = defineResource<undefined>({
      name: 'hold',
      volatileWork: true,
      onePhaseByPrepare: true,
      prepare: async () => ({ vote: 'prepared' }),
      commit: async () => {
        calls.push('confirm');
        if (failWith !== undefined) throw legacy(failWith);
        return { committed: true };
      },
      rollback: async () => {
        calls.push('cancel');
        if (failWith !== undefined) throw legacy(failWith);
      },
    });
    const q = participantOf('hotel', 5102, new FileBranchStore({ path: path.join(dir, 'hold.jsonl') }), [
      flaky,
    ]);
    await q.start();
    try {
      const enlist = async () => {
        const ctx = ctxFor();
        await txServerMiddleware(q)(callIn(ctx), async () => 'ok');
        return { xid: ctx.xid, branchId: 'hold@hotel-1' };
      };
      // two-phase commit
      const a = await enlist();
      assert.deepEqual(await q.prepare(a, 'hold'), { vote: 'prepared' });
      failWith = status.NOT_FOUND;
      const err = await q.commit(a, 'hold', false).then(
        () => assert.fail('committed'),
        (e: unknown) => e as DmtpError,
      );
      assert.ok(err instanceof ResourceFailedError, String(err));
      assert.equal(err.code, status.UNAVAILABLE);
      assert.match(err.message, /resource 'hold' failed to commit branch hold@hotel-1 .*legacy says 5/);
      assert.equal((await q.store.get(a))?.status, 'prepared', 'still prepared: asked again');
      failWith = undefined;
      assert.deepEqual(await q.commit(a, 'hold', false), { committed: true });
      // one phase (by prepare)
      const b = await enlist();
      failWith = status.ALREADY_EXISTS;
      const once = await q.commit(b, 'hold', true).then(
        () => assert.fail('answered committed'),
        (e: unknown) => e as DmtpError,
      );
      assert.equal(once.code, status.UNAVAILABLE, String(once));
      failWith = undefined;
      assert.deepEqual(await q.commit(b, 'hold', true), { committed: true });
      // rollback
      const c = await enlist();
      assert.deepEqual(await q.prepare(c, 'hold'), { vote: 'prepared' });
      failWith = status.NOT_FOUND;
      const rb = await q.rollback(c, 'hold', 'aborted').then(
        () => assert.fail('rolled back'),
        (e: unknown) => e as DmtpError,
      );
      assert.equal(rb.code, status.UNAVAILABLE, String(rb));
      assert.equal((await q.store.get(c))?.status, 'prepared');
      failWith = undefined;
      await q.rollback(c, 'hold', 'aborted');
      assert.equal((await q.store.get(c))?.status, 'rolled_back');
    } finally {
      await q.stop();
    }
  });

  it('recovery does not confirm again a branch that phase 2 committed while the coordinator was asked', async () => {
    const ctx = ctxFor();
    await mw()(callIn(ctx), async () => 'ok');
    const key = { xid: ctx.xid, branchId: 'db@bank-1' };
    assert.deepEqual(await p.prepare(key, 'db'), { vote: 'prepared' });
    const answering = {
      queryOutcome: async () => {
        await p.commit(key, 'db', false); // phase 2 arrives meanwhile
        return Outcome.OUTCOME_COMMIT;
      },
    } as unknown as CoordinatorClients;
    clock.advance(60_000);
    fake.calls.length = 0;
    await recoverInDoubt(p, answering, 0);
    assert.equal((await p.store.get(key))?.status, 'committed');
    assert.deepEqual(
      fake.calls.filter((c) => c.startsWith('commit')),
      ['commit undefined false'],
      'committed once, by phase 2',
    );
  });

  it('a prepared branch of a resource no longer configured is refused, not crashed on or marked rolled back', async () => {
    // Before, Commit threw a TypeError for ever, and Rollback recorded the branch rolled back without rolling
    // back its prepared transaction, which kept its locks.
    const file = path.join(dir, 'renamed.jsonl');
    const make = (name: string) => {
      const f = fakeResource();
      const r = defineResource<FakeHandle>({ ...f.resource, name });
      return {
        calls: f.calls,
        q: participantOf('bank', 5000, new FileBranchStore({ path: file }), [r]),
      };
    };
    const before = make('db');
    await before.q.start();
    const ctx = ctxFor();
    await txServerMiddleware(before.q)(callIn(ctx), async () => 'ok');
    const key = { xid: ctx.xid, branchId: 'db@bank-1' };
    assert.deepEqual(await before.q.prepare(key, 'db'), { vote: 'prepared' });
    await before.q.stop();

    const renamed = make('ledger');
    await renamed.q.start();
    try {
      for (const step of [
        () => renamed.q.commit(key, 'db', false),
        () => renamed.q.rollback(key, 'db', 'abort'),
      ]) {
        await assert.rejects(step(), (e: Error) => {
          assert.equal(codeOf(e), status.FAILED_PRECONDITION, String(e));
          assert.match(e.message, /resource 'db', which this participant no longer has/);
          return true;
        });
      }
      assert.equal((await renamed.q.store.get(key))?.status, 'prepared', 'nothing recorded');
    } finally {
      await renamed.q.stop();
    }
  });

  it('prepares once and commits once, however often asked', async () => {
    const ctx = ctxFor();
    const key = { xid: ctx.xid, branchId: 'db@bank-1' };
    await mw()(callIn(ctx), async () => 'ok');
    assert.deepEqual(await p.prepare(key, 'db'), { vote: 'prepared' });
    assert.deepEqual(await p.prepare(key, 'db'), { vote: 'prepared' });
    await Promise.all([p.commit(key, 'db', false), p.commit(key, 'db', false)]);
    await p.commit(key, 'db', false);
    assert.deepEqual(fake.calls, ['begin db@bank-1', 'prepare 1', 'commit undefined false']);
    const err = await mw()(callIn(ctx), async () => 'late').catch((e: unknown) => e);
    assert.equal(codeOf(err), status.FAILED_PRECONDITION, 'no more work on a committed branch');
  });

  it('a branch reported again by a restarted instance makes the transaction rollback-only: its earlier work is gone', async () => {
    // Before, a lazily enlisted branch left nothing behind when its process died between two calls: the second
    // call, at the restarted instance (same id), opened the branch anew, and Commit applied it without the first.
    const lazy = defineResource<undefined>({
      name: 'db',
      volatileWork: true,
      prepare: async () => ({ vote: 'prepared' }),
      commit: async () => ({ committed: true }),
      rollback: async () => undefined,
    });
    // A crash, not a stop: the lazily enlisted branch was never written, so the restarted process's store
    // (here a second file: the first process is not gone) does not know it either.
    const store = (n: number) => new FileBranchStore({ path: path.join(dir, `restart-${n}.jsonl`) });
    const ctx = ctxFor();
    const initiator: TxContext = { ...ctx, role: 'initiator', branches: [], events: [], active: true };
    const callAt = async (q: Participant) => {
      const call = callIn(ctx);
      await txServerMiddleware(q)(call, async () => 'ok');
      await runInTx(initiator, () =>
        clientCall('ledger', async () => ({ response: {}, trailers: call.trailers, instanceId: 'ledger-1' })),
      );
    };
    const first = participantOf('ledger', 5101, store(1), [lazy]);
    await first.start();
    await callAt(first);
    await callAt(first);
    assert.equal(initiator.rollbackOnly, undefined, 'two calls of one incarnation: one branch, nothing lost');
    assert.equal(initiator.branches.length, 1);
    const restarted = participantOf('ledger', 5101, store(2), [lazy]);
    await restarted.start();
    try {
      await callAt(restarted);
      assert.notEqual(restarted.incarnation, first.incarnation);
      assert.match(
        String(initiator.rollbackOnly),
        /branch db@ledger-1 at ledger instance ledger-1 was lost: the instance restarted between calls/,
      );
    } finally {
      await restarted.stop();
      await first.stop();
    }
  });

  it('forwards the branches of onward calls in its own trailers', async () => {
    const ctx = ctxFor();
    const call = callIn(ctx);
    const onward = {
      branchId: 'db@stock-1',
      service: 'stock',
      instanceId: 'stock-1',
      address: 'h:1',
      resource: 'db',
    };
    await mw()(call, async () => {
      currentTx()!.branches.push(onward);
    });
    const ids = call.trailers.get(MD.branch).map((v) => JSON.parse(String(v)).branchId);
    assert.deepEqual(ids, ['db@bank-1', 'db@stock-1']);
  });
});
