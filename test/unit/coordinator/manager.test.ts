import { ONE_PHASE_RESOLVABLE_AFTER } from '../../../coordinator/phase-two';
import { strict as assert } from 'node:assert';
import { status } from '@grpc/grpc-js';
import { DeadlineExceededError, fromStatus, ManualClock, mintXid, toStatus } from '../../../common';
import { MemoryEventSink, MemoryLifecycleSink } from '../../../coordinator/event-sink';
import { MemoryTxLog } from '../../../coordinator/log/memory-log';
import { RECOVER_PER_TURN, TransactionManager, type ManagerDeps } from '../../../coordinator/manager';
import { BranchState, Outcome, TxState, Vote, type StagedEvent } from '../../../proto/gen/dmtp/v1/types';
import { branch, FakeGateway } from '../../support/coordinator-fake-gateway';
import { record } from '../../support/tx-log-contract';

const ID = 'coord-unit';
const tick = async (n = 5) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};
const code = (c: status) => (e: unknown) => toStatus(e).code === c;
const event = (value = 'v', topic = 'orders'): StagedEvent => ({
  topic,
  key: Buffer.from('k'),
  value: Buffer.from(value),
  headers: {},
  sequence: 0,
});

describe('TransactionManager (ManualClock, memory log, fake gateway)', function () {
  let clock: ManualClock;
  let log: MemoryTxLog;
  let gw: FakeGateway;
  let managers: TransactionManager[];
  let m: TransactionManager;

  const make = (extra: Partial<ManagerDeps> = {}) => {
    const mm = new TransactionManager({
      id: ID,
      log,
      gateway: gw,
      clock,
      options: { prepareTimeoutMs: 1_000, defaultTimeoutMs: 10_000 },
      ...extra,
    });
    managers.push(mm);
    return mm;
  };
  const xid = () => mintXid(ID, clock.now());
  /** The branches told `phase` for transaction `x`, sorted. */
  const toldBranches = (x: string, phase: 'prepare' | 'commit' | 'rollback') =>
    gw
      .callsFor(x, phase)
      .map((c) => c.branchId)
      .sort();

  beforeEach(() => {
    clock = new ManualClock();
    log = new MemoryTxLog({ unsafeForTests: true });
    gw = new FakeGateway();
    managers = [];
    m = make();
  });
  afterEach(async () => {
    for (const mm of managers) await mm.stop();
    assert.equal(clock.pending(), 0, 'stop() left timers behind');
  });

  describe('two-phase commit', () => {
    it('prepares every branch, makes COMMITTING durable, answers, then commits each branch and forgets', async () => {
      const x = xid();
      const out = await m.commit(x, { branches: [branch('a'), branch('b')] });
      assert.equal(out.state, TxState.TX_STATE_COMMITTED);
      assert.deepEqual(
        gw.callsFor(x, 'prepare').map((c) => c.branchId),
        ['a', 'b'],
      );
      await tick();
      assert.deepEqual(
        gw.callsFor(x, 'commit').map((c) => [c.branchId, c.onePhase]),
        [
          ['a', false],
          ['b', false],
        ],
      );
      assert.equal(log.writes, 2, 'one COMMITTING record, one removal');
      assert.equal(log.size, 0);
      assert.equal((await m.get(x)).state, TxState.TX_STATE_COMMITTED);
      assert.equal(await m.queryOutcome(x), Outcome.OUTCOME_COMMIT);
    });

    it('sends no phase-2 message before the decision is durable', async () => {
      let release!: () => void;
      const slow = new MemoryTxLog({ unsafeForTests: true });
      const create = slow.create.bind(slow);
      slow.create = async (r) => {
        await new Promise<void>((res) => (release = res));
        return create(r);
      };
      log = slow;
      const mm = make();
      const x = xid();
      let answered = false;
      const p = mm.commit(x, { branches: [branch('a'), branch('b')] }).then(() => (answered = true));
      await tick();
      assert.equal(gw.callsFor(x, 'prepare').length, 2);
      assert.equal(gw.callsFor(x, 'commit').length, 0);
      assert.equal(answered, false, 'answered before the decision was durable');
      assert.equal(await mm.queryOutcome(x), Outcome.OUTCOME_PENDING);
      release();
      await p;
      assert.equal((await slow.get(x))?.state ?? TxState.TX_STATE_COMMITTING, TxState.TX_STATE_COMMITTING);
      await tick();
      assert.equal(gw.callsFor(x, 'commit').length, 2);
    });

    it('a branch voting ABORT aborts all: ABORTED with the reason, rollbacks, no log write', async () => {
      gw.set('b', { prepare: 'abort' });
      const x = xid();
      const out = await m.commit(x, { branches: [branch('a'), branch('b'), branch('c')] });
      assert.equal(out.state, TxState.TX_STATE_ABORTED);
      assert.match(out.abortReason, /b voted abort: insufficient funds/);
      await tick();
      assert.deepEqual(toldBranches(x, 'rollback'), ['a', 'b', 'c']);
      assert.equal(gw.callsFor(x, 'commit').length, 0);
      assert.equal(log.writes, 0);
      assert.equal(await m.queryOutcome(x), Outcome.OUTCOME_ABORT);
    });

    it('holds to a presumed abort: a Commit that arrives after its outcome was asked for is refused as ABORTED', async () => {
      // Before, QueryOutcome answered ABORT for an xid whose Commit had not arrived yet (still on its way, or its
      // block still running), and the Commit that came next committed it: an "aborted" transaction applied.
      const x = xid();
      assert.equal(await m.queryOutcome(x), Outcome.OUTCOME_ABORT);
      const out = await m.commit(x, { branches: [branch('a'), branch('b')], firstAttempt: true });
      assert.equal(out.state, TxState.TX_STATE_ABORTED);
      assert.match(out.abortReason, /presumed aborted: its outcome was asked for before its Commit reached/);
      assert.equal(gw.callsFor(x, 'prepare').length, 0);
      assert.equal(gw.callsFor(x, 'commit').length, 0);
      await tick();
      assert.deepEqual(
        toldBranches(x, 'rollback'),
        ['a', 'b'],
        'the branches learn the abort now, not at their deadline',
      );
      assert.equal(await m.queryOutcome(x), Outcome.OUTCOME_ABORT);
      assert.equal(log.writes, 0);
    });

    it('holds to a Rollback of an xid it never heard of: a Commit that arrives after it is refused', async () => {
      // Before, the Rollback answered ABORTED and kept nothing, and the Commit that came next committed.
      const x = xid();
      assert.equal(await m.rollback(x, 'cancelled by an operator'), TxState.TX_STATE_ABORTED);
      const out = await m.commit(x, { branches: [branch('a')], firstAttempt: true });
      assert.equal(out.state, TxState.TX_STATE_ABORTED);
      assert.match(
        out.abortReason,
        /rolled back before its Commit reached the coordinator: cancelled by an operator/,
      );
      assert.equal(gw.callsFor(x, 'commit').length, 0);
      await tick();
      assert.deepEqual(toldBranches(x, 'rollback'), ['a']);
    });

    it('a prepare error aborts', async () => {
      gw.set('a', { prepare: 'error' });
      const out = await m.commit(xid(), { branches: [branch('a'), branch('b')] });
      assert.equal(out.state, TxState.TX_STATE_ABORTED);
      assert.match(out.abortReason, /a failed to prepare/);
    });

    it('a branch not voting within prepareTimeoutMs aborts the transaction', async () => {
      gw.set('b', { prepare: 'hang' });
      const x = xid();
      const box: { out?: { state: TxState; abortReason: string } } = {};
      void m.commit(x, { branches: [branch('a'), branch('b')] }).then((o) => (box.out = o));
      await tick();
      clock.advance(999);
      await tick();
      assert.equal(Object.keys(box).length, 0, 'answered before the prepare timeout');
      clock.advance(1);
      await tick();
      assert.equal(box.out?.state, TxState.TX_STATE_ABORTED);
      assert.match(box.out!.abortReason, /prepare timed out after 1000 ms \(1 of 2/);
      assert.deepEqual(toldBranches(x, 'rollback'), ['a', 'b']);
    });

    it('a prepare call whose own deadline passes first is reported as the prepare timeout', async () => {
      gw.set('b', { prepare: 'deadline' });
      const x = xid();
      const out = await m.commit(x, { branches: [branch('a'), branch('b')] });
      assert.equal(out.state, TxState.TX_STATE_ABORTED);
      assert.match(out.abortReason, /prepare timed out after 1000 ms \(branch b did not vote\)/);
      await tick();
      assert.deepEqual(toldBranches(x, 'rollback'), ['a', 'b']);
    });

    it('a rollback the participant refuses as impossible, or of a branch it does not have, ends; any other failure is retried', async () => {
      gw.set('b', { prepare: 'abort' });
      gw.set('bad', { refusePhase2: status.INVALID_ARGUMENT });
      gw.set('gone', { refusePhase2: status.UNIMPLEMENTED });
      gw.set('elsewhere', { refusePhase2: status.NOT_FOUND }); // an SDK participant: another instance's branch
      gw.set('stuck', { refusePhase2: status.FAILED_PRECONDITION });
      const x = xid();
      const branches = [branch('bad'), branch('gone'), branch('elsewhere'), branch('b')];
      await m.commit(x, { branches });
      await m.finished(x);
      assert.equal(m.inFlight, 0, 'refused as impossible: counted as acknowledged');
      const y = xid();
      await m.commit(y, { branches: [branch('stuck'), branch('b')] });
      for (let i = 0; i < 10; i++) {
        clock.advance(6_000); // past the longest backoff
        await tick();
      }
      assert.ok(gw.callsFor(y, 'rollback').filter((c) => c.branchId === 'stuck').length > 3, 'asked again');
      assert.equal((await m.get(y)).state, TxState.TX_STATE_ABORTING);
    });

    it('read-only voters get no phase-2 message', async () => {
      gw.set('ro', { prepare: 'read-only' });
      const x = xid();
      await m.commit(x, { branches: [branch('a'), branch('ro')] });
      await tick();
      assert.deepEqual(
        gw.callsFor(x, 'commit').map((c) => c.branchId),
        ['a'],
      );
      assert.deepEqual((await log.load(ID)).length, 0);
    });

    it('all read-only and no events: committed without any log write', async () => {
      gw.set('r1', { prepare: 'read-only' }).set('r2', { prepare: 'read-only' });
      const x = xid();
      assert.equal(
        (await m.commit(x, { branches: [branch('r1'), branch('r2')] })).state,
        TxState.TX_STATE_COMMITTED,
      );
      await tick();
      assert.equal(log.writes, 0);
      assert.equal(gw.callsFor(x, 'commit').length, 0);
      assert.equal((await m.get(x)).state, TxState.TX_STATE_COMMITTED);
    });

    it('retries phase 2 with backoff until every branch acknowledges', async () => {
      gw.set('b', { failPhase2: 3 });
      const x = xid();
      await m.commit(x, { branches: [branch('a'), branch('b')] });
      await tick();
      assert.equal((await m.get(x)).state, TxState.TX_STATE_COMMITTING);
      const b = (await m.get(x)).branches.find((br) => br.ref!.branchId === 'b')!;
      assert.equal(b.attempts, 1);
      assert.match(b.lastError, /temporarily unavailable/);
      assert.ok(b.nextRetryAtMs > clock.now());
      for (let i = 0; i < 4; i++) {
        clock.advance(10_000);
        await tick();
      }
      assert.equal(gw.callsFor(x, 'commit').filter((c) => c.branchId === 'b').length, 4);
      assert.equal((await m.get(x)).state, TxState.TX_STATE_COMMITTED);
      assert.equal(log.size, 0);
    });

    it('while the log cannot be written: UNAVAILABLE after decisionTimeoutMs, PENDING, then committed once it can', async () => {
      const mm = make({ options: { decisionTimeoutMs: 3_000, prepareTimeoutMs: 1_000 } });
      const x = xid();
      log.failing = true;
      const p = mm.commit(x, { branches: [branch('a'), branch('b')], firstAttempt: true });
      const seen = p.then(
        () => 'answered',
        (e) => toStatus(e).code,
      );
      await tick();
      for (let i = 0; i < 30; i++) {
        clock.advance(100);
        await tick(2);
      }
      assert.equal(await seen, status.UNAVAILABLE);
      assert.equal(
        await mm.queryOutcome(x),
        Outcome.OUTCOME_PENDING,
        'no decision yet: neither COMMIT nor ABORT',
      );
      await assert.rejects(
        mm.rollback(x),
        code(status.UNAVAILABLE),
        'a rollback cannot overtake a decision being written',
      );
      assert.equal(gw.callsFor(x, 'commit').length + gw.callsFor(x, 'rollback').length, 0);
      log.failing = false;
      clock.advance(5_000);
      await tick();
      assert.equal(await mm.queryOutcome(x), Outcome.OUTCOME_COMMIT);
      assert.equal(gw.callsFor(x, 'commit').length, 2);
      assert.equal(
        (await mm.commit(x)).state,
        TxState.TX_STATE_COMMITTED,
        'a retried Commit learns the outcome',
      );
    });

    it('commit and rollback are idempotent', async () => {
      const x = xid();
      await m.commit(x, { branches: [branch('a'), branch('b')] });
      assert.equal(
        (await m.commit(x, { branches: [branch('a'), branch('b')] })).state,
        TxState.TX_STATE_COMMITTED,
      );
      await tick();
      assert.equal((await m.commit(x)).state, TxState.TX_STATE_COMMITTED);
      assert.equal(gw.callsFor(x, 'prepare').length, 2);
      await assert.rejects(m.rollback(x), code(status.FAILED_PRECONDITION));
      const y = xid();
      await m.begin({ xid: y });
      assert.equal(await m.rollback(y), TxState.TX_STATE_ABORTED);
      assert.equal(await m.rollback(y), TxState.TX_STATE_ABORTED);
      assert.equal((await m.commit(y)).state, TxState.TX_STATE_ABORTED);
    });
  });

  describe('one-phase commit', () => {
    it('one branch and no events: Commit{one_phase}, no prepare; its record becomes the committed marker', async () => {
      const x = xid();
      assert.equal((await m.commit(x, { branches: [branch('only')] })).state, TxState.TX_STATE_COMMITTED);
      assert.deepEqual(
        gw.callsFor(x).map((c) => [c.op, c.onePhase]),
        [['commit', true]],
      );
      await m.finished(x);
      assert.equal(log.writes, 2, 'the onePhase record, then record -> marker');
      assert.equal(log.size, 0);
      await m.stop();
      assert.equal(await make().queryOutcome(x), Outcome.OUTCOME_COMMIT, 'still COMMIT after a restart');
    });

    it('logOnePhase off: no log write at all', async () => {
      const mm = make({ options: { logOnePhase: false } });
      const x = xid();
      assert.equal((await mm.commit(x, { branches: [branch('only')] })).state, TxState.TX_STATE_COMMITTED);
      assert.equal(log.writes, 0);
      assert.equal(await mm.queryOutcome(x), Outcome.OUTCOME_COMMIT);
    });

    it('an unanswered one-phase commit is asked again until the branch answers: pending, never a guessed ABORT', async () => {
      gw.set('only', { failOnePhase: 6 });
      const x = xid();
      const reply = m.commit(x, { branches: [branch('only')], firstAttempt: true });
      reply.catch(() => undefined);
      await tick();
      clock.advance(1_000); // prepareTimeoutMs of this suite: the Commit call answers, the branch is asked again
      await assert.rejects(
        reply,
        (e: unknown) => toStatus(e).code === status.UNAVAILABLE && /pending/.test(String(e)),
      );
      assert.equal(await m.queryOutcome(x), Outcome.OUTCOME_PENDING);
      for (let i = 0; i < 20 && gw.callsFor(x, 'commit').length < 7; i++) {
        clock.advance(5_000);
        await tick();
      }
      assert.equal(gw.callsFor(x, 'commit').length, 7, '6 lost answers, then the answer');
      assert.equal(await m.queryOutcome(x), Outcome.OUTCOME_COMMIT);
      assert.equal((await m.commit(x, { branches: [branch('only')] })).state, TxState.TX_STATE_COMMITTED);
      assert.equal(gw.callsFor(x, 'rollback').length, 0, 'nothing guessed, nothing rolled back');
    });

    it('a refusal after a one-phase attempt that may have committed is no proof: asked on, resolvable, never ABORT', async () => {
      // Before, any refusal ended a one-phase commit as not committed, even after an earlier attempt went
      // unanswered — and that one may have committed (the instance then moved; a stranger at its old address
      // answers UNIMPLEMENTED): the initiator was told ABORT and a Rollback sent for committed work.
      let n = 0;
      gw.commit = async (b, x, onePhase) => {
        gw.calls.push({ op: 'commit', xid: x, branchId: b.branchId, onePhase });
        if (++n === 1) throw new DeadlineExceededError('deadline exceeded'); // it may have committed
        throw fromStatus(status.UNIMPLEMENTED, `${b.address}: unknown service dmtp.v1.Participant`);
      };
      const x = xid();
      const reply = m.commit(x, { branches: [branch('only')] }).catch((e: unknown) => e);
      for (let i = 0; i < 5; i++) {
        clock.advance(5_000);
        await tick();
      }
      assert.ok(gw.callsFor(x, 'commit').length >= 3, 'asked again after the refusal');
      assert.ok(toStatus(await reply).code === status.UNAVAILABLE, 'the Commit call: outcome pending');
      assert.equal(await m.queryOutcome(x), Outcome.OUTCOME_PENDING, 'no guess');
      assert.equal(gw.callsFor(x, 'rollback').length, 0, 'nothing rolled back');
      // The refusal makes an operator's word possible at once (who checked the branch's own database).
      assert.equal(await m.resolve(x, Outcome.OUTCOME_COMMIT, 'checked by hand'), TxState.TX_STATE_COMMITTED);
    });

    it('a first one-phase attempt refused is proof nothing ran: not committed, at once', async () => {
      gw.commit = async (b, x, onePhase) => {
        gw.calls.push({ op: 'commit', xid: x, branchId: b.branchId, onePhase });
        throw fromStatus(status.UNIMPLEMENTED, `${b.address}: unknown service dmtp.v1.Participant`);
      };
      const x = xid();
      const out = await m.commit(x, { branches: [branch('only')] });
      assert.equal(out.state, TxState.TX_STATE_ABORTED);
      assert.match(out.abortReason, /one-phase commit refused/);
    });

    it('recovery takes a refusal of its one-phase Commit for no proof: an earlier process may have sent it', async () => {
      const x = xid();
      await log.create(
        record(x, TxState.TX_STATE_PREPARING, { branches: [branch('only')], events: [], onePhase: true }),
      );
      gw.commit = async (b, xx, onePhase) => {
        gw.calls.push({ op: 'commit', xid: xx, branchId: b.branchId, onePhase });
        throw fromStatus(status.UNIMPLEMENTED, `${b.address}: unknown service dmtp.v1.Participant`);
      };
      const mm = make();
      await mm.start();
      for (let i = 0; i < 3; i++) {
        clock.advance(5_000);
        await tick();
      }
      assert.ok(gw.callsFor(x, 'commit').length >= 2, 'asked again');
      assert.equal(await mm.queryOutcome(x), Outcome.OUTCOME_PENDING);
      assert.equal(gw.callsFor(x, 'rollback').length, 0);
      await mm.stop();
    });

    it('a stop while Commit and Rollback wait for a one-phase answer ends both waits: outcome pending', async () => {
      // Before, stop() cancelled the timer bounding the wait along with the asking: both calls hung for good
      // (an adopted owner dropped after a fenced write keeps serving while its manager stops).
      gw.set('only', { onePhase: 'error' });
      const x = xid();
      const commit = m.commit(x, { branches: [branch('only')] }).catch((e: unknown) => e);
      await tick();
      const rollback = m.rollback(x).catch((e: unknown) => e);
      await tick();
      await m.stop();
      for (const call of [commit, rollback]) {
        const e = await call;
        assert.equal(toStatus(e).code, status.UNAVAILABLE, String(e));
        assert.match(String(e), /outcome pending/);
      }
    });

    it('recovery asks a one-phase branch again instead of presuming abort', async () => {
      const x = xid();
      await log.create(
        record(x, TxState.TX_STATE_PREPARING, { branches: [branch('only')], events: [], onePhase: true }),
      );
      const mm = make();
      assert.deepEqual(await mm.start(), { recovered: 1, committing: 0, onePhase: 1, aborted: 0 });
      await mm.finished(x);
      assert.deepEqual(
        gw.callsFor(x).map((c) => [c.op, c.onePhase]),
        [['commit', true]],
      );
      assert.equal(await mm.queryOutcome(x), Outcome.OUTCOME_COMMIT);
      assert.equal(log.size, 0, 'the record became the committed marker');
    });

    it('a branch that can no longer tell (record purged) is asked on, never guessed, until an operator decides', async () => {
      for (const [decision, state] of [
        [Outcome.OUTCOME_COMMIT, TxState.TX_STATE_COMMITTED],
        [Outcome.OUTCOME_ABORT, TxState.TX_STATE_ABORTED],
      ] as const) {
        const x = xid();
        await log.create(
          record(x, TxState.TX_STATE_PREPARING, { branches: [branch('old')], events: [], onePhase: true }),
        );
        gw.set('old', { onePhase: 'forgotten' });
        const mm = make();
        await mm.start(); // recovery asks the branch again, long after its transaction
        for (let i = 0; i < 5; i++) {
          clock.advance(5_000);
          await tick();
        }
        assert.ok(gw.callsFor(x, 'commit').length >= 3, 'asked again and again');
        assert.equal(await mm.queryOutcome(x), Outcome.OUTCOME_PENDING, 'no guess');
        const shown = await mm.get(x);
        assert.match(shown.branches[0].lastError, /not known here/);
        assert.equal(await mm.resolve(x, decision, 'checked the ledger by hand'), state);
        await mm.finished(x);
        assert.equal(
          await mm.queryOutcome(x),
          decision === Outcome.OUTCOME_COMMIT ? Outcome.OUTCOME_COMMIT : Outcome.OUTCOME_ABORT,
        );
        const rolledBack = gw.callsFor(x, 'rollback').length;
        assert.equal(rolledBack, decision === Outcome.OUTCOME_ABORT ? 1 : 0, 'ABORT tells the branch');
        const asked = gw.callsFor(x, 'commit').length;
        clock.advance(60_000);
        await tick();
        assert.equal(gw.callsFor(x, 'commit').length, asked, 'the asking stopped with the decision');
        await mm.stop();
      }
    });

    it('an operator cannot override a one-phase branch that may still answer, only one long unanswered', async () => {
      gw.set('only', { onePhase: 'error' });
      const x = xid();
      // The Commit call itself answers UNAVAILABLE ("outcome pending") at the decision timeout; the asking goes on.
      const call = m.commit(x, { branches: [branch('only')] }).catch((e: unknown) => e);
      await tick();
      await assert.rejects(m.resolve(x, Outcome.OUTCOME_ABORT), code(status.FAILED_PRECONDITION));
      // Unanswered again and again (the instance gone for good): the operator's word may end it.
      while (gw.callsFor(x, 'commit').length < ONE_PHASE_RESOLVABLE_AFTER - 1) {
        clock.advance(6_000); // past the longest backoff
        await tick();
      }
      await assert.rejects(m.resolve(x, Outcome.OUTCOME_ABORT), code(status.FAILED_PRECONDITION));
      clock.advance(6_000);
      await tick();
      assert.equal(gw.callsFor(x, 'commit').length, ONE_PHASE_RESOLVABLE_AFTER);
      assert.equal(
        await m.resolve(x, Outcome.OUTCOME_ABORT, 'instance gone; nothing in its database'),
        TxState.TX_STATE_ABORTED,
      );
      await m.finished(x);
      assert.equal(await m.queryOutcome(x), Outcome.OUTCOME_ABORT);
      assert.equal(toStatus(await call).code, status.UNAVAILABLE);
    });

    it('the participant refusing the one-phase commit aborts', async () => {
      gw.set('only', { onePhase: 'rollback' });
      const out = await m.commit(xid(), { branches: [branch('only')] });
      assert.equal(out.state, TxState.TX_STATE_ABORTED);
      assert.match(out.abortReason, /constraint violated/);
    });

    it('one branch WITH staged events takes the two-phase path (the events need the durable record)', async () => {
      const sink = new MemoryEventSink();
      const mm = make({ eventSink: sink });
      const x = xid();
      await mm.commit(x, { branches: [branch('only')], events: [event('e1'), event('e2')] });
      assert.equal(gw.callsFor(x, 'prepare').length, 1);
      await tick();
      assert.deepEqual(
        sink.published.map((p) => p.events.map((e) => [e.sequence, e.value.toString()])),
        [
          [
            [0, 'e1'],
            [1, 'e2'],
          ],
        ],
      );
      assert.equal(log.size, 0);
    });
  });

  describe('events and lifecycle', () => {
    it('keeps the record until the sink accepts the events, retrying while it fails', async () => {
      const sink = new MemoryEventSink();
      const life = new MemoryLifecycleSink();
      sink.failing = true;
      const mm = make({ eventSink: sink, lifecycle: life });
      const x = xid();
      await mm.commit(x, { branches: [branch('a'), branch('b')], events: [event()] });
      await tick();
      clock.advance(1_000);
      await tick();
      assert.ok(sink.attempts >= 2);
      assert.equal(log.size, 1, 'events not delivered yet: the record must stay');
      const waiting = await mm.get(x);
      assert.equal(waiting.eventsDelivered, false);
      // Why they wait, for `tx show`: the relay's failed attempts, its last error, its next try.
      assert.equal(waiting.eventsAttempts, sink.attempts);
      assert.equal(waiting.eventsLastError, 'memory event sink is failing (simulated broker outage)');
      assert.ok(
        waiting.eventsNextRetryAtMs > clock.now(),
        `${waiting.eventsNextRetryAtMs} vs ${clock.now()}`,
      );
      sink.failing = false;
      clock.advance(20_000);
      await tick();
      assert.equal(sink.published.length, 1);
      assert.equal(log.size, 0);
      assert.deepEqual(
        life.notices.filter((n) => n.xid === x).map((n) => n.kind),
        ['begun', 'prepared', 'committed'],
      );
    });

    it('retries a custom sink that throws instead of rejecting', async () => {
      const published: string[] = [];
      let throws = 1;
      const sink = {
        publish: (x: string) => {
          if (throws-- > 0) throw new Error('not a promise: thrown at once');
          published.push(x);
          return Promise.resolve();
        },
      };
      const mm = make({ eventSink: sink as never });
      const x = xid();
      await mm.commit(x, { branches: [branch('a'), branch('b')], events: [event()] });
      for (let i = 0; i < 5; i++) {
        clock.advance(1_000);
        await tick();
      }
      assert.deepEqual(published, [x]);
      await mm.finished(x);
    });

    it('never publishes an aborted transaction’s events', async () => {
      const sink = new MemoryEventSink();
      const mm = make({ eventSink: sink });
      gw.set('b', { prepare: 'abort' });
      await mm.commit(xid(), { branches: [branch('a'), branch('b')], events: [event()] });
      await tick();
      assert.equal(sink.attempts, 0);
    });

    it('refuses staged events when no sink is configured', async () => {
      await assert.rejects(m.commit(xid(), { events: [event()] }), code(status.FAILED_PRECONDITION));
    });
  });

  describe('deadlines', () => {
    it('aborts an ACTIVE transaction past its deadline and rolls back its branches', async () => {
      const { xid: x, deadlineAtMs } = await m.begin({ timeoutMs: 2_000 });
      assert.equal(deadlineAtMs, clock.now() + 2_000);
      await m.enlist(x, branch('a'));
      clock.advance(1_999);
      assert.equal((await m.get(x)).state, TxState.TX_STATE_ACTIVE);
      clock.advance(1);
      await tick();
      assert.equal((await m.get(x)).state, TxState.TX_STATE_ABORTED);
      assert.match((await m.get(x)).abortReason, /timed out after 2000 ms/);
      assert.deepEqual(
        gw.callsFor(x, 'rollback').map((c) => c.branchId),
        ['a'],
      );
      await assert.rejects(m.enlist(x, branch('b')), code(status.FAILED_PRECONDITION));
      assert.equal((await m.commit(x)).state, TxState.TX_STATE_ABORTED);
    });
  });

  describe('recovery', () => {
    it('re-drives COMMITTING records, aborts undecided ones, and leaves the log empty', async () => {
      const committing = xid();
      const undecided = xid();
      await log.create(
        record(committing, TxState.TX_STATE_COMMITTING, { branches: [branch('a'), branch('b')], events: [] }),
      );
      await log.create(
        record(undecided, TxState.TX_STATE_PREPARING, { branches: [branch('c')], events: [] }),
      );
      await log.create(record(mintXid('other-owner'), TxState.TX_STATE_COMMITTING));
      const mm = make();
      assert.deepEqual(await mm.start(), { recovered: 2, committing: 1, onePhase: 0, aborted: 1 });
      assert.equal(await mm.queryOutcome(committing), Outcome.OUTCOME_COMMIT);
      await tick();
      assert.deepEqual(
        gw.callsFor(committing, 'commit').map((c) => c.branchId),
        ['a', 'b'],
      );
      assert.deepEqual(
        gw.callsFor(undecided, 'rollback').map((c) => c.branchId),
        ['c'],
      );
      assert.equal(gw.callsFor(undecided, 'commit').length, 0);
      assert.deepEqual((await log.load(ID)).length, 0);
      assert.equal(log.size, 1, "another owner's record is not touched");
    });

    it('recovers a large log in batches, letting the I/O that waited run between them', async () => {
      const n = 2 * RECOVER_PER_TURN + 10;
      for (let i = 0; i < n; i++)
        await log.create(record(xid(), TxState.TX_STATE_COMMITTING, { branches: [branch('a')], events: [] }));
      const mm = make();
      const started = mm.start();
      // Queued before start() yields for the first time: it runs once the first batch is done (its microtasks too).
      const seenAtFirstTurn = await new Promise<number>((resolve) =>
        setImmediate(() => resolve(new Set(gw.calls.map((c) => c.xid)).size)),
      );
      assert.equal(seenAtFirstTurn, RECOVER_PER_TURN, 'phase 2 was under way for the first batch only');
      assert.deepEqual(await started, { recovered: n, committing: n, onePhase: 0, aborted: 0 });
      await tick(10);
      assert.equal(new Set(gw.calls.filter((c) => c.op === 'commit').map((c) => c.xid)).size, n);
    });

    it('a stop during recovery ends it: start() fails UNAVAILABLE and what is left stays in the log untouched', async () => {
      const n = 2 * RECOVER_PER_TURN;
      const xids: string[] = [];
      for (let i = 0; i < n; i++) {
        xids.push(xid());
        await log.create(
          record(xids[i], TxState.TX_STATE_PREPARING, { branches: [branch('a')], events: [] }),
        );
      }
      const mm = make();
      const started = mm.start();
      setImmediate(() => void mm.stop()); // after the first batch (an adopted owner's fence lost)
      await assert.rejects(started, (e: unknown) => {
        assert.equal(toStatus(e).code, status.UNAVAILABLE);
        assert.match(
          (e as Error).message,
          new RegExp(`stopped while recovering: ${n - RECOVER_PER_TURN} of ${n}`),
        );
        return true;
      });
      await tick();
      const rolledBack = new Set(gw.calls.filter((c) => c.op === 'rollback').map((c) => c.xid));
      assert.equal(rolledBack.size, RECOVER_PER_TURN, 'the first batch was aborted');
      for (const x of xids.slice(RECOVER_PER_TURN)) {
        assert.equal(rolledBack.has(x), false, `${x} was touched after the stop`);
        assert.equal((await log.get(x))?.state, TxState.TX_STATE_PREPARING);
      }
    });

    it('a recovered COMMITTING transaction shows its branches voted PREPARED (the record holds only those)', async () => {
      // Before, `tx show` after a restart or takeover showed an empty VOTE next to a branch being committed.
      const x = xid();
      await log.create(
        record(x, TxState.TX_STATE_COMMITTING, { branches: [branch('a'), branch('b')], events: [] }),
      );
      gw.set('a', { failPhase2: 1_000 });
      const mm = make();
      await mm.start();
      await tick();
      const t = await mm.get(x);
      assert.equal(t.state, TxState.TX_STATE_COMMITTING);
      assert.deepEqual(
        t.branches.map((b) => [b.ref?.branchId, b.vote]),
        [
          ['a', Vote.VOTE_PREPARED],
          ['b', Vote.VOTE_PREPARED],
        ],
      );
    });

    it('refuses to start without an event sink while its log holds committed events; a taker finishes the branches', async () => {
      // Before, such a transaction stayed COMMITTING in memory for good, its events never published, silently.
      const x = xid();
      await log.create(
        record(x, TxState.TX_STATE_COMMITTING, { branches: [branch('a'), branch('b')], events: [event()] }),
      );
      await assert.rejects(make().start(), (e: Error) => {
        assert.ok(toStatus(e).code === status.FAILED_PRECONDITION, String(e));
        assert.match(e.message, /1 committed transaction\(s\) .* still hold staged events .* no event sink/);
        return true;
      });
      assert.equal(gw.callsFor(x).length, 0, 'nothing driven');
      // A taker without a sink (HA) finishes what it can: the branches; the events wait in the record.
      const taker = make({ takenOver: true });
      await taker.start();
      await tick();
      assert.deepEqual(
        gw.callsFor(x, 'commit').map((c) => c.branchId),
        ['a', 'b'],
      );
      assert.equal((await log.load(ID)).length, 1, 'the record keeps the events');
      assert.match((await taker.get(x)).eventsLastError, /has no event sink: the events wait in its record/);
      // …and they do not hold the owner: it is handed back to its coordinator, which has a sink.
      assert.equal(taker.inFlight, 1);
      assert.equal(taker.busy, 0, 'nothing this taker can finish itself');
    });

    it('a finished commit is still COMMIT after a restart (committed marker); an unknown xid is still ABORT', async () => {
      const x = xid();
      assert.equal(
        (await m.commit(x, { branches: [branch('a'), branch('b')] })).state,
        TxState.TX_STATE_COMMITTED,
      );
      await m.finished(x);
      assert.equal(log.size, 0, 'the record is gone');
      await m.stop();
      clock.advance(1_000);
      const mm = make();
      await mm.start();
      assert.equal(await mm.queryOutcome(x), Outcome.OUTCOME_COMMIT);
      assert.equal(await mm.queryOutcome(xid()), Outcome.OUTCOME_ABORT);
      const again = make();
      await again.start();
      assert.equal((await again.get(x)).state, TxState.TX_STATE_COMMITTED);
      const before = gw.callsFor(x, 'prepare').length;
      assert.equal(
        (await again.commit(x, { branches: [branch('a'), branch('b')] })).state,
        TxState.TX_STATE_COMMITTED,
      );
      assert.equal(gw.callsFor(x, 'prepare').length, before, 'a retried Commit runs no second phase 1');
      await assert.rejects(make().rollback(x), code(status.FAILED_PRECONDITION));
      const late = make(); // knows nothing of x in memory: only its committed marker can tell
      await late.start();
      await assert.rejects(late.enlist(x, branch('late')), code(status.FAILED_PRECONDITION));
      assert.equal(late.inFlight, 0, 'a late Enlist did not bring it back');
      assert.equal(await late.queryOutcome(x), Outcome.OUTCOME_COMMIT);
      await assert.rejects(make().begin({ xid: x }), code(status.FAILED_PRECONDITION));
      const rolledBack = xid();
      await again.rollback(rolledBack, 'no', [branch('c')]);
      await again.finished(rolledBack);
      assert.equal(await make().queryOutcome(rolledBack), Outcome.OUTCOME_ABORT, 'aborts stay write-free');
    });

    it('a first-attempt Commit or Rollback reads no committed marker; a retry reads it', async () => {
      const reads: string[] = [];
      const read = log.committedMarker.bind(log);
      log.committedMarker = (x: string) => (reads.push(x), read(x));
      const fresh = xid();
      const o = { branches: [branch('a'), branch('b')], firstAttempt: true };
      assert.equal((await m.commit(fresh, o)).state, TxState.TX_STATE_COMMITTED);
      const dropped = xid();
      assert.equal(
        await m.rollback(dropped, 'no', [branch('c')], { firstAttempt: true }),
        TxState.TX_STATE_ABORTED,
      );
      assert.deepEqual(reads, [], 'the hot path reads nothing from the log');
      await m.finished(fresh);
      // A retry (first_attempt unset) to a restarted coordinator finds the earlier decision.
      await m.stop();
      const mm = make();
      await mm.start();
      assert.equal((await mm.commit(fresh, { branches: o.branches })).state, TxState.TX_STATE_COMMITTED);
      await assert.rejects(mm.rollback(fresh), code(status.FAILED_PRECONDITION));
      assert.deepEqual(reads, [fresh], 'read once, then remembered');
    });

    it('a retry after the outcome left memory reads the marker; an unreadable log is UNAVAILABLE, not a rerun', async () => {
      const mm = make({ options: { maxRemembered: 2 } });
      clock.advance(120_000); // well past the start: only the dropped outcomes can make an xid "forgotten"
      const x = xid();
      const o = { branches: [branch('a'), branch('b')], firstAttempt: true };
      assert.equal((await mm.commit(x, o)).state, TxState.TX_STATE_COMMITTED);
      await mm.finished(x);
      for (let i = 0; i < 3; i++) {
        const y = xid();
        await mm.commit(y, o);
        await mm.finished(y);
      }
      const prepares = gw.callsFor(x, 'prepare').length;
      log.failing = true;
      await assert.rejects(mm.commit(x, { branches: o.branches }), code(status.UNAVAILABLE));
      log.failing = false;
      assert.equal((await mm.commit(x, { branches: o.branches })).state, TxState.TX_STATE_COMMITTED);
      assert.equal(gw.callsFor(x, 'prepare').length, prepares, 'no second phase 1');
      assert.equal(gw.callsFor(x, 'rollback').length, 0);
    });

    it('a recovered transaction with undelivered events publishes them again', async () => {
      const sink = new MemoryEventSink();
      const x = xid();
      await log.create(record(x, TxState.TX_STATE_COMMITTING, { branches: [branch('a')] }));
      await make({ eventSink: sink }).start();
      await tick();
      assert.deepEqual(
        sink.published.map((p) => p.xid),
        [x],
      );
    });
  });

  describe('presumed abort and queries', () => {
    it('an unknown xid: Get NOT_FOUND, QueryOutcome ABORT (then held: Get shows it), Rollback ABORTED', async () => {
      const x = xid();
      await assert.rejects(m.get(x), code(status.NOT_FOUND));
      assert.equal(await m.queryOutcome(x), Outcome.OUTCOME_ABORT);
      const held = await m.get(x);
      assert.equal(held.state, TxState.TX_STATE_ABORTED);
      assert.match(held.abortReason, /^presumed aborted/);
      assert.equal(await m.rollback(x), TxState.TX_STATE_ABORTED);
      assert.equal(await m.rollback(mintXid(ID, clock.now())), TxState.TX_STATE_ABORTED);
    });

    it('holds to a presumed abort given while a Commit retry read the log: that Commit is refused', async () => {
      // Before, the retry read the committed marker (none) and then began and committed the transaction whose
      // outcome had been answered ABORT while it read.
      clock.advance(1); // minted after the start: a retry reads the log, and the start rule does not apply
      const gates: (() => void)[] = [];
      const read = log.committedMarker.bind(log);
      log.committedMarker = async (x: string) => {
        await new Promise<void>((r) => gates.push(r));
        return read(x);
      };
      const x = xid();
      const commit = m.commit(x, { branches: [branch('a'), branch('b')], firstAttempt: false });
      await tick();
      const asked = m.queryOutcome(x);
      await tick();
      gates.pop()!(); // the query's read answers first: no marker, ABORT
      assert.equal(await asked, Outcome.OUTCOME_ABORT);
      gates.shift()!(); // then the Commit's
      assert.equal((await commit).state, TxState.TX_STATE_ABORTED);
      await tick();
      assert.deepEqual(toldBranches(x, 'prepare'), []);
      assert.deepEqual(toldBranches(x, 'commit'), []);
    });

    it('refuses a Commit that arrives after its deadline, counted from the xid, has passed', async () => {
      const x = xid();
      clock.advance(10_000 + 60_001); // its timeout, and the clock skew allowed
      const out = await m.commit(x, { branches: [branch('a')], timeoutMs: 10_000, firstAttempt: true });
      assert.equal(out.state, TxState.TX_STATE_ABORTED);
      assert.match(out.abortReason, /its deadline passed before its Commit reached/);
      assert.deepEqual(toldBranches(x, 'prepare'), []);
      await tick();
      assert.deepEqual(toldBranches(x, 'rollback'), ['a']);
      assert.equal(m.inFlight, 0);
    });

    it('aborts a retried Commit of an xid older than the process with no record: it may have been answered aborted', async () => {
      const m1 = make();
      const answered = xid();
      const running = xid();
      assert.equal(await m1.queryOutcome(answered), Outcome.OUTCOME_ABORT);
      await m1.stop();
      clock.advance(1_000);
      const m2 = make(); // the same id on the same log: a restart
      const retried = await m2.commit(answered, {
        branches: [branch('a'), branch('b')],
        firstAttempt: false,
      });
      assert.equal(retried.state, TxState.TX_STATE_ABORTED);
      assert.match(retried.abortReason, /began before coordinator .* started and is not in its log/);
      // A first attempt (the SDK's only one) of a transaction that ran across the restart still commits.
      const first = await m2.commit(running, { branches: [branch('a'), branch('b')], firstAttempt: true });
      assert.equal(first.state, TxState.TX_STATE_COMMITTED);
    });

    it('a Rollback of an unknown xid naming branches tells them once and keeps no live transaction', async () => {
      gw.set('gone', { failPhase2: 1_000_000 });
      const x = xid();
      assert.equal(await m.rollback(x, 'by an operator', [branch('gone')]), TxState.TX_STATE_ABORTED);
      assert.equal(m.inFlight, 0, 'no maxInFlight slot held for a branch nobody answers for');
      clock.advance(3_600_000);
      await tick();
      assert.equal(gw.callsFor(x, 'rollback').length, 1);
      assert.equal(
        (await m.commit(x, { branches: [branch('a')], firstAttempt: true })).state,
        TxState.TX_STATE_ABORTED,
      );
    });

    it('refuses an xid minted in the future (beyond clock skew)', async () => {
      const future = mintXid(ID, clock.now() + 3_600_000);
      await assert.rejects(m.queryOutcome(future), code(status.INVALID_ARGUMENT));
      await assert.rejects(m.commit(future, { branches: [branch('a')] }), code(status.INVALID_ARGUMENT));
      assert.equal(m.inFlight, 0);
    });

    it('stops telling an unreachable branch to roll back after rollbackRetryMs: presumed abort covers it', async () => {
      // Before, the Rollback was retried for ever: every abort with a branch at an instance gone for good stayed
      // in memory with a timer, until maxInFlight refused all new work.
      const mm = make({ options: { prepareTimeoutMs: 1_000, rollbackRetryMs: 60_000 } });
      gw.set('gone', { failPhase2: 1_000_000 });
      const { xid: x } = await mm.begin();
      assert.equal(await mm.rollback(x, 'by the initiator', [branch('gone')]), TxState.TX_STATE_ABORTED);
      await tick();
      clock.advance(30_000);
      await tick();
      assert.equal(mm.inFlight, 1, 'still telling it within rollbackRetryMs');
      for (let i = 0; i < 20 && mm.inFlight > 0; i++) {
        clock.advance(5_000);
        await tick();
      }
      assert.equal(mm.inFlight, 0, 'given up: nothing left in memory');
      const asked = gw.callsFor(x, 'rollback').length;
      assert.ok(asked > 5, `asked ${asked} times first`);
      clock.advance(60_000);
      await tick();
      assert.equal(gw.callsFor(x, 'rollback').length, asked, 'no timer left asking');
      assert.equal(await mm.queryOutcome(x), Outcome.OUTCOME_ABORT, 'the branch that asks is told ABORT');
    });

    it('ACTIVE and PREPARING are PENDING', async () => {
      const { xid: x } = await m.begin();
      assert.equal(await m.queryOutcome(x), Outcome.OUTCOME_PENDING);
      gw.set('h', { prepare: 'hang' });
      void m.commit(x, { branches: [branch('h'), branch('a')] });
      await tick();
      assert.equal((await m.get(x)).state, TxState.TX_STATE_PREPARING);
      assert.equal(await m.queryOutcome(x), Outcome.OUTCOME_PENDING);
    });

    it('rollback while preparing aborts instead of committing', async () => {
      gw.set('h', { prepare: 'hang' });
      const x = xid();
      const p = m.commit(x, { branches: [branch('h'), branch('a')] });
      await tick();
      const r = m.rollback(x, 'user cancelled');
      clock.advance(1_000);
      assert.equal(await r, TxState.TX_STATE_ABORTED);
      assert.equal((await p).state, TxState.TX_STATE_ABORTED);
    });

    it('resolve: NOT_FOUND for unknown, FAILED_PRECONDITION once decided, ABORT for a stuck ACTIVE one', async () => {
      const { OUTCOME_ABORT: ABORT, OUTCOME_COMMIT: COMMIT } = Outcome;
      await assert.rejects(m.resolve(xid(), ABORT), code(status.NOT_FOUND));
      const done = xid();
      await m.commit(done, { branches: [branch('a'), branch('b')] });
      await assert.rejects(m.resolve(done, ABORT), code(status.FAILED_PRECONDITION));
      const { xid: stuck } = await m.begin();
      await m.enlist(stuck, branch('a'));
      await assert.rejects(m.resolve(stuck, COMMIT), code(status.FAILED_PRECONDITION));
      assert.equal(await m.resolve(stuck, ABORT), TxState.TX_STATE_ABORTED);
    });

    it('resolve --abort of a PREPARING transaction whose prepare hangs answers ABORTING at once, and it aborts', async () => {
      // Before, the call waited for phase 1 (up to prepareTimeoutMs): the CLI's deadline passed first and an
      // abort the coordinator had taken was reported to the operator as failed.
      const mm = make({ options: { prepareTimeoutMs: 60_000 } });
      gw.set('h', { prepare: 'hang' });
      const x = xid();
      const commit = mm.commit(x, { branches: [branch('a'), branch('h')] });
      await tick();
      assert.equal(await mm.resolve(x, Outcome.OUTCOME_ABORT, 'operator'), TxState.TX_STATE_ABORTING);
      await assert.rejects(mm.resolve(x, Outcome.OUTCOME_COMMIT), /an abort is already requested/);
      clock.advance(60_000); // phase 1 ends (its prepare timeout)
      const out = await commit;
      assert.equal(out.state, TxState.TX_STATE_ABORTED);
      // The operator's reason is the one kept (it was lost behind the prepare timeout's), phase 1's after it.
      assert.match(out.abortReason, /^operator; phase 1: prepare timed out/);
      assert.equal((await mm.get(x)).abortReason, out.abortReason);
      await tick();
      assert.deepEqual(toldBranches(x, 'commit'), []);
      assert.deepEqual(toldBranches(x, 'rollback'), ['a', 'h']);
    });

    it('pages through many transactions in xid order, each once', async () => {
      const all: string[] = [];
      for (let i = 0; i < 57; i++) all.push((await m.begin()).xid);
      const seen: string[] = [];
      let token = '';
      do {
        const page = m.list({ pageSize: 10, pageToken: token });
        assert.ok(page.transactions.length <= 10);
        seen.push(...page.transactions.map((t) => t.xid));
        token = page.nextPageToken;
      } while (token);
      assert.deepEqual(seen, [...all].sort());
    });

    it('lists by state and age, paged', async () => {
      const xs = [(await m.begin()).xid, (await m.begin()).xid, (await m.begin()).xid];
      clock.advance(500);
      const young = (await m.begin()).xid;
      const p1 = m.list({ pageSize: 2 });
      assert.equal(p1.transactions.length, 2);
      const p2 = m.list({ pageSize: 2, pageToken: p1.nextPageToken });
      assert.equal(p2.nextPageToken, '');
      assert.deepEqual(
        [...p1.transactions, ...p2.transactions].map((t) => t.xid).sort(),
        [...xs, young].sort(),
      );
      assert.deepEqual(
        m
          .list({ olderThanMs: 400 })
          .transactions.map((t) => t.xid)
          .sort(),
        [...xs].sort(),
      );
      assert.equal(m.list({ state: TxState.TX_STATE_COMMITTING }).transactions.length, 0);
      assert.throws(() => m.list({ pageSize: 1001 }), code(status.INVALID_ARGUMENT));
      assert.throws(() => m.list({ pageToken: 'garbage' }), code(status.INVALID_ARGUMENT));
    });

    it('lists the transactions with a branch at a participant service or instance, paged', async () => {
      const at = (id: string, service: string, instanceId: string) => ({
        ...branch(id),
        service,
        instanceId,
      });
      const xs: string[] = [];
      for (const refs of [
        [at('a', 'inventory', 'inv-1'), at('b', 'payment', 'pay-1')],
        [at('a', 'inventory', 'inv-2')],
        [at('a', 'payment', 'pay-1')],
        [at('a', 'inventory', 'inv-1')],
      ]) {
        const { xid: x } = await m.begin();
        for (const ref of refs) await m.enlist(x, ref);
        xs.push(x);
      }
      const ids = (q: Parameters<typeof m.list>[0]) => m.list(q).transactions.map((t) => t.xid);
      assert.deepEqual(ids({ instanceId: 'inv-1' }), [xs[0], xs[3]]);
      assert.deepEqual(ids({ service: 'payment' }), [xs[0], xs[2]]);
      assert.deepEqual(ids({ service: 'inventory', instanceId: 'pay-1' }), [xs[0]], 'both must hold');
      assert.deepEqual(ids({ instanceId: 'nobody' }), []);
      const p1 = m.list({ service: 'inventory', pageSize: 2 });
      assert.deepEqual(
        [
          ...p1.transactions,
          ...m.list({ service: 'inventory', pageToken: p1.nextPageToken }).transactions,
        ].map((t) => t.xid),
        [xs[0], xs[1], xs[3]],
      );
      assert.throws(() => m.list({ instanceId: 'x'.repeat(257) }), code(status.INVALID_ARGUMENT));
    });
  });

  describe("an operator's settle of a branch", () => {
    const NEVER = 1_000_000; // phase-2 failures before one succeeds: a participant gone for good
    const told = (x: string, id: string) => gw.callsFor(x).filter((c) => c.branchId === id).length;
    const branchOf = async (mm: TransactionManager, x: string, id: string) =>
      (await mm.get(x)).branches.find((b) => b.ref!.branchId === id)!;

    it('a COMMITTING branch never acknowledged: the record loses it first, nothing more is sent, the rest finishes', async () => {
      gw.set('b', { failPhase2: NEVER }).set('c', { failPhase2: NEVER });
      const x = xid();
      await m.commit(x, { branches: [branch('a'), branch('b'), branch('c')] });
      await tick();
      const r = await m.settleBranch(x, 'b', 'COMMIT PREPARED by hand on the restored db');
      assert.deepEqual(r, {
        state: TxState.TX_STATE_COMMITTING,
        branchState: BranchState.BRANCH_STATE_COMMITTED,
        settled: true,
      });
      // Durable before it counts: a restart sends phase 2 to 'c' only ('a' acknowledged, 'b' settled).
      assert.deepEqual(
        (await log.get(x))!.branches.map((ref) => ref.branchId),
        ['c'],
      );
      const b = await branchOf(m, x, 'b');
      assert.equal(b.reason, 'settled by an operator: COMMIT PREPARED by hand on the restored db');
      assert.equal(b.nextRetryAtMs, 0);
      assert.deepEqual([b.settled, (await branchOf(m, x, 'a')).settled], [true, false]);
      const sentToB = told(x, 'b');
      for (let i = 0; i < 5; i++) {
        clock.advance(10_000);
        await tick();
      }
      assert.equal(told(x, 'b'), sentToB, 'no phase-2 message to a settled branch');
      assert.ok(told(x, 'c') > 2, "'c' is still retried");
      assert.equal((await m.get(x)).state, TxState.TX_STATE_COMMITTING);

      // The last one: nothing left to send, so no record write before the transaction finishes.
      const last = await m.settleBranch(x, 'c');
      assert.equal(last.settled, true);
      await m.finished(x);
      assert.equal(log.size, 0, 'the record became the committed marker');
      assert.equal(await m.queryOutcome(x), Outcome.OUTCOME_COMMIT);
    });

    it('a restart after a settle does not send to the settled branch', async () => {
      gw.set('b', { failPhase2: NEVER }).set('c', { failPhase2: NEVER });
      const x = xid();
      await m.commit(x, { branches: [branch('b'), branch('c')] });
      await tick();
      await m.settleBranch(x, 'b');
      await m.stop();
      const before = told(x, 'b');
      const mm = make();
      assert.deepEqual(await mm.start(), { recovered: 1, committing: 1, onePhase: 0, aborted: 0 });
      await tick();
      assert.equal(told(x, 'b'), before);
      assert.deepEqual(
        (await mm.get(x)).branches.map((br) => br.ref!.branchId),
        ['c'],
      );
      await mm.settleBranch(x, 'c');
      await mm.finished(x);
    });

    it('a phase-2 call still on its way when its branch is settled is not counted twice', async () => {
      gw.set('a', { holdPhase2: true }).set('b', { failPhase2: NEVER });
      const x = xid();
      await m.commit(x, { branches: [branch('a'), branch('b')] });
      await tick();
      assert.equal((await m.settleBranch(x, 'a')).settled, true);
      assert.equal(gw.answerHeld('a'), 1, "a's Commit was on its way");
      await tick();
      // Counted twice, phase 2 would have ended with 'b' never acknowledged.
      assert.equal((await m.get(x)).state, TxState.TX_STATE_COMMITTING);
      assert.equal((await branchOf(m, x, 'b')).state, BranchState.BRANCH_STATE_PREPARED);
      await m.settleBranch(x, 'b');
      await m.finished(x);
    });

    it('settles of one transaction at once each write a record without the ones before', async () => {
      for (const id of ['a', 'b', 'c']) gw.set(id, { failPhase2: NEVER });
      const x = xid();
      await m.commit(x, { branches: [branch('a'), branch('b'), branch('c')] });
      await tick();
      const written: string[][] = [];
      const update = log.update.bind(log);
      log.update = async (rec) => {
        written.push(rec.branches.map((ref) => ref.branchId));
        return update(rec);
      };
      await Promise.all([m.settleBranch(x, 'a'), m.settleBranch(x, 'b')]);
      assert.deepEqual(written, [['b', 'c'], ['c']]);
      assert.deepEqual(
        (await log.get(x))!.branches.map((ref) => ref.branchId),
        ['c'],
      );
    });

    it('an aborting branch: its rollback ends, and with logPrepare the undecided record loses it', async () => {
      const mm = make({ options: { prepareTimeoutMs: 1_000, defaultTimeoutMs: 10_000, logPrepare: true } });
      gw.set('no', { prepare: 'abort' }).set('b', { failPhase2: NEVER }).set('c', { failPhase2: NEVER });
      const x = xid();
      assert.equal(
        (await mm.commit(x, { branches: [branch('no'), branch('b'), branch('c')] })).state,
        TxState.TX_STATE_ABORTED,
      );
      await tick();
      const r = await mm.settleBranch(x, 'b', 'ROLLBACK PREPARED by hand');
      assert.deepEqual(r, {
        state: TxState.TX_STATE_ABORTING,
        branchState: BranchState.BRANCH_STATE_ROLLED_BACK,
        settled: true,
      });
      const stored = (await log.get(x))!;
      assert.equal(stored.state, TxState.TX_STATE_PREPARING, 'still undecided: recovery aborts it');
      assert.deepEqual(
        stored.branches.map((ref) => ref.branchId),
        ['c'],
      );
      await mm.settleBranch(x, 'c');
      await mm.finished(x);
      assert.equal(log.size, 0);
      assert.equal(await mm.queryOutcome(x), Outcome.OUTCOME_ABORT);
    });

    it('refuses what it cannot settle, naming it, and changes nothing', async () => {
      gw.set('b', { failPhase2: NEVER });
      const active = xid();
      await m.begin({ xid: active });
      await m.enlist(active, branch('a'));
      await assert.rejects(m.settleBranch(active, 'a'), (e: unknown) => {
        const s = toStatus(e);
        return (
          s.code === status.FAILED_PRECONDITION && /ACTIVE.*no decision yet \(tx resolve/.test(s.details)
        );
      });
      const x = xid();
      await m.commit(x, { branches: [branch('a'), branch('b')] });
      await tick();
      await assert.rejects(m.settleBranch(x, 'nope'), (e: unknown) => {
        const s = toStatus(e);
        return s.code === status.NOT_FOUND && s.details.includes(`${x} has no branch 'nope'`);
      });
      await assert.rejects(m.settleBranch(mintXid(ID, clock.now() + 1), 'a'), code(status.NOT_FOUND));
      await assert.rejects(m.settleBranch('other:1:1', 'a'), code(status.FAILED_PRECONDITION));
      // 'a' acknowledged already: left as it is, no write.
      const writes = log.writes;
      assert.deepEqual(await m.settleBranch(x, 'a'), {
        state: TxState.TX_STATE_COMMITTING,
        branchState: BranchState.BRANCH_STATE_COMMITTED,
        settled: false,
      });
      assert.equal(log.writes, writes);
      assert.equal((await branchOf(m, x, 'a')).reason, '');
      await m.settleBranch(x, 'b');
      await m.finished(x);
      await assert.rejects(m.settleBranch(x, 'b'), (e: unknown) => {
        const s = toStatus(e);
        return s.code === status.FAILED_PRECONDITION && /already finished/.test(s.details);
      });
    });

    it('a log that does not confirm the write: UNAVAILABLE, the branch still waits, and asked again it settles', async () => {
      gw.set('b', { failPhase2: NEVER }).set('c', { failPhase2: NEVER });
      const x = xid();
      await m.commit(x, { branches: [branch('b'), branch('c')] });
      await tick();
      log.failing = true;
      await assert.rejects(m.settleBranch(x, 'b'), (e: unknown) => {
        const s = toStatus(e);
        return s.code === status.UNAVAILABLE && s.details.includes(`settle of branch 'b' of ${x}`);
      });
      log.failing = false;
      assert.equal((await branchOf(m, x, 'b')).state, BranchState.BRANCH_STATE_PREPARED);
      assert.equal((await m.settleBranch(x, 'b')).settled, true);
    });
  });

  describe('limits and bad input', () => {
    it('refuses settings that cannot work, naming them: 0 timings, a default timeout past the largest', () => {
      // Before, a phase-2 call timeout of 0 started a coordinator that answered COMMITTED at the commit point and
      // never told a branch (every call expired at once); a prepare timeout of 0 aborted every transaction.
      for (const [options, name] of [
        [{ phase2CallTimeoutMs: 0 }, /phase2CallTimeoutMs must be a whole number in 1-/],
        [{ prepareTimeoutMs: 0.5 }, /prepareTimeoutMs/],
        [{ defaultTimeoutMs: 700_000 }, /defaultTimeoutMs must be a whole number in 1-600000/],
        [{ phase2Backoff: { initialMs: 0, maxMs: 10, multiplier: 2 } }, /phase2Backoff\.initialMs/],
        [{ rollbackRetryMs: -1 }, /rollbackRetryMs/],
      ] as const) {
        assert.throws(
          () => make({ options }),
          (e: Error) => toStatus(e).code === status.INVALID_ARGUMENT && name.test(e.message),
          JSON.stringify(options),
        );
      }
    });

    it('rejects each limit with a clear status', async () => {
      const mm = make({
        options: { maxBranches: 2, maxEventsPerTx: 2, maxEventBytes: 100 },
        eventSink: new MemoryEventSink(),
      });
      const three = [branch('a'), branch('b'), branch('c')];
      await assert.rejects(mm.commit(xid(), { branches: three }), code(status.RESOURCE_EXHAUSTED));
      await assert.rejects(
        mm.commit(xid(), { events: [event(), event(), event()] }),
        code(status.RESOURCE_EXHAUSTED),
      );
      await assert.rejects(
        mm.commit(xid(), { events: [event('x'.repeat(200))] }),
        code(status.RESOURCE_EXHAUSTED),
      );
      await assert.rejects(
        mm.commit(xid(), { events: [event('v', 'bad topic!')] }),
        code(status.INVALID_ARGUMENT),
      );
      await assert.rejects(mm.commit(xid(), { events: [event('v', '..')] }), code(status.INVALID_ARGUMENT));
      const euros = { ...event('v'), headers: { h: '€'.repeat(35) } }; // 44 characters in all, 114 bytes
      await assert.rejects(mm.commit(xid(), { events: [euros] }), (e: Error) => {
        assert.equal(toStatus(e).code, status.RESOURCE_EXHAUSTED);
        assert.match(e.message, /stages 1\d\d bytes of events/, 'counted in bytes, as Kafka does');
        return true;
      });
      const big = make({ options: { maxEventBytes: 4 * 1024 * 1024 }, eventSink: new MemoryEventSink() });
      await assert.rejects(
        big.commit(xid(), { events: [event('x'.repeat(1024 * 1024))] }),
        /one event may have at most/,
        'an event the relay could never publish is refused before the commit',
      );
      assert.equal(big.inFlight, 0);
      // 200,000 control characters: 200 KB as bytes, 1.2 MB once JSON escapes them in the decision record.
      const escaped = { ...event('v'), headers: { h: '\u0001'.repeat(200_000) } };
      await assert.rejects(
        big.commit(xid(), { events: [escaped] }),
        /would take \d+ bytes in its log record/,
        'a decision record that no log write could carry is refused before any prepare',
      );
      assert.equal(big.inFlight, 0);
      await assert.rejects(mm.begin({ timeoutMs: 10 * 60_000 + 1 }), code(status.INVALID_ARGUMENT));
      await assert.rejects(mm.begin({ xid: 'not an xid' }), code(status.INVALID_ARGUMENT));
      await assert.rejects(mm.begin({ xid: mintXid('someone-else') }), code(status.FAILED_PRECONDITION));
      await assert.rejects(
        mm.commit(xid(), { branches: [{ ...branch('a'), address: '' }] }),
        /branches\[0\]\.address/,
      );
      assert.equal(mm.inFlight, 0, 'rejected requests changed nothing');
    });

    it('refuses a branch reference its participant would refuse, before holding anything', async () => {
      for (const bad of [
        { ...branch('a'), branchId: 'bad id' },
        { ...branch('a'), branchId: 'tab\tid' },
        { ...branch('a'), branchId: 'b'.repeat(129) },
        { ...branch('a'), resource: 'db 1' },
        { ...branch('a'), resource: 'r'.repeat(65) },
        { ...branch('a'), address: 'not an address' },
        { ...branch('a'), address: 'unix:/tmp/p.sock' },
        { ...branch('a'), address: '127.0.0.1:70000' },
      ]) {
        await assert.rejects(m.commit(xid(), { branches: [branch('ok'), bad] }), (e: unknown) => {
          assert.equal(toStatus(e).code, status.INVALID_ARGUMENT);
          assert.match((e as Error).message, /branches\[1\]\.(branchId|resource|address) .* is invalid/);
          return true;
        });
        await assert.rejects(m.enlist(xid(), bad), code(status.INVALID_ARGUMENT));
        await assert.rejects(m.rollback(xid(), 'r', [bad]), code(status.INVALID_ARGUMENT));
      }
      assert.equal(m.inFlight, 0);
      assert.equal(gw.calls.length, 0, 'no participant was called');
    });

    it('a branch named twice in one request counts once; twice with different references is refused', async () => {
      const x = xid();
      assert.equal(
        (await m.commit(x, { branches: [branch('d'), branch('d')] })).state,
        TxState.TX_STATE_COMMITTED,
      );
      assert.equal(gw.callsFor(x, 'prepare').length, 0, 'one branch: one phase');
      assert.deepEqual(
        gw.callsFor(x, 'commit').map((c) => [c.branchId, c.onePhase]),
        [['d', true]],
      );
      await assert.rejects(
        m.commit(xid(), { branches: [branch('d'), branch('d', '127.0.0.1:2')] }),
        (e: unknown) =>
          toStatus(e).code === status.INVALID_ARGUMENT && /named twice/.test((e as Error).message),
      );
      assert.equal(m.inFlight, 0);
    });

    it('a refused Rollback or Enlist leaves nothing behind; enlisting a branch again is a no-op', async () => {
      const mm = make({ options: { maxBranches: 2 } });
      const three = [branch('a'), branch('b'), branch('c')];
      await assert.rejects(mm.rollback(xid(), 'r', three), code(status.RESOURCE_EXHAUSTED));
      assert.equal(mm.inFlight, 0, 'an unknown xid was not begun');
      const { xid: x } = await mm.begin();
      await mm.enlist(x, branch('a'));
      await mm.enlist(x, branch('b'));
      assert.equal(await mm.enlist(x, branch('b')), TxState.TX_STATE_ACTIVE, 'at the limit, again: a no-op');
      await assert.rejects(mm.rollback(x, 'r', [branch('c')]), code(status.RESOURCE_EXHAUSTED));
      assert.equal((await mm.get(x)).state, TxState.TX_STATE_ACTIVE, 'a refused Rollback aborted nothing');
      assert.equal(await mm.rollback(x, 'r', [branch('a')]), TxState.TX_STATE_ABORTED);
    });

    it('enlist after commit is FAILED_PRECONDITION', async () => {
      const { xid: x } = await m.begin();
      await m.enlist(x, branch('a'));
      await m.enlist(x, branch('b'));
      await m.commit(x);
      assert.equal(gw.callsFor(x, 'prepare').length, 2);
      await assert.rejects(m.enlist(x, branch('c')), code(status.FAILED_PRECONDITION));
    });
  });
});
