import { strict as assert } from 'node:assert';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Etcd3 } from 'etcd3';
import { mintXid } from '../../../common';
import { Outcome, TxState, type StagedEvent } from '../../../proto/gen/dmtp/v1/types';
import { coordinatorClient } from '../../support/coordinator-client';
import { spawnCoordinator, type CoordinatorChild } from '../../support/coordinator-process';
import { waitFor } from '../../support/coordinator-wait';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { TestParticipant } from '../../support/test-participant';

const TOTAL = 100;
const CONCURRENCY = 10;
type Result = 'committed' | 'aborted' | 'error';

/**
 * The coordinator runs as a child process and dies at a crash point (fail-point exit, or kill -9) while
 * transactions are in flight; it is restarted on the same etcd prefix and id. Then every transaction must be
 * all-committed or all-rolled-back on its two participants, every acknowledged commit committed on both, and
 * nothing in doubt (participants ask QueryOutcome for their prepared branches, as the SDK does).
 */
describe('coordinator fault tolerance (child process, real etcd, real gRPC)', function () {
  this.timeout(90_000);
  let etcd: Etcd3;
  let a: TestParticipant;
  let b: TestParticipant;
  let children: CoordinatorChild[] = [];
  let dir: string;

  before(async () => {
    etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    a = await new TestParticipant({ name: 'fault-a' }).start();
    b = await new TestParticipant({ name: 'fault-b', switches: { voteAbort: ['abort'] } }).start();
    dir = mkdtempSync(path.join(tmpdir(), 'dmtp-fault-'));
  });
  after(async () => {
    await Promise.all([a.stop(), b.stop()]);
    etcd.close();
    rmSync(dir, { recursive: true, force: true });
  });
  afterEach(async () => {
    await Promise.all(children.map((c) => c.kill()));
    children = [];
  });

  async function run(
    ctx: Mocha.Context,
    how: { failpoint?: string; killAfterResults?: number; events?: boolean; env?: Record<string, string> },
  ) {
    const prefix = `/dmtp-test/${nameFor(ctx)}`;
    const id = `fault-${Math.random().toString(36).slice(2, 8)}`;
    const sinkFile = path.join(dir, `${id}.events`);
    const env: Record<string, string> = { DMTP_PREPARE_TIMEOUT_MS: '2000', ...how.env };
    if (how.events) env.DMTP_EVENT_SINK = `file:${sinkFile}`;
    const first = await spawnCoordinator({ id, prefix, failpoint: how.failpoint, env });
    children.push(first);
    let dead = false;
    void first.exited.then(() => (dead = true));

    const client = coordinatorClient(first.address);
    const results = new Map<string, Result>();
    const bBranch = new Map<string, string>();
    let next = 0;
    const worker = async () => {
      while (!dead && next < TOTAL) {
        const i = next++;
        // every 7th transaction has a branch voting abort, so both outcomes are in flight at the crash
        const xid = mintXid(id);
        const events: StagedEvent[] = how.events
          ? [
              {
                topic: 'orders',
                key: Buffer.from(xid),
                value: Buffer.from(`e${i}`),
                headers: {},
                sequence: 0,
              },
            ]
          : [];
        const bId = i % 7 === 0 ? 'abort' : 'b';
        bBranch.set(xid, bId);
        results.set(xid, 'error');
        try {
          const r = await client.commit({ xid, branches: [a.branch('a'), b.branch(bId)], events }, 5_000);
          results.set(xid, r.state === TxState.TX_STATE_COMMITTED ? 'committed' : 'aborted');
        } catch {
          results.set(xid, 'error');
        }
        if (
          how.killAfterResults &&
          [...results.values()].filter((r) => r !== 'error').length >= how.killAfterResults
        ) {
          await first.kill();
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    client.close();
    if (how.failpoint) {
      const code = await Promise.race([
        first.exited,
        new Promise((r) => setTimeout(() => r('alive'), 10_000)),
      ]);
      assert.equal(code, 137, `the fail-point ${how.failpoint} did not fire`);
    } else await first.kill();
    assert.ok(dead, 'the coordinator did not die');

    const restartedAt = Date.now();
    const second = await spawnCoordinator({ id, prefix, env });
    children.push(second);
    const c2 = coordinatorClient(second.address);
    try {
      if (how.env?.DMTP_LOG_PREPARE) {
        // PREPARING records let recovery roll back what it prepared without waiting for the participants
        await waitFor(
          'the coordinator finished every transaction',
          async () => (await c2.list({})).transactions.length === 0,
          30_000,
        );
        await waitFor(
          'the log emptied',
          async () => (await etcd.getAll().prefix(`${prefix}/tx/`).keys()).length === 0,
        );
        assert.deepEqual(
          [...a.inDoubt(), ...b.inDoubt()],
          [],
          'in doubt although the log named every prepared branch',
        );
      }
      // participants resolve their in-doubt branches; the coordinator finishes what its log holds
      await waitFor(
        'no branch left in doubt',
        async () => {
          const left = (await a.resolveInDoubt(second.address)) + (await b.resolveInDoubt(second.address));
          return left === 0 && a.inDoubt().length === 0 && b.inDoubt().length === 0;
        },
        30_000,
      );
      await waitFor(
        'the coordinator finished every transaction',
        async () => (await c2.list({})).transactions.length === 0,
        30_000,
      );
      await waitFor(
        'the log emptied',
        async () => (await etcd.getAll().prefix(`${prefix}/tx/`).keys()).length === 0,
      );
    } finally {
      c2.close();
    }

    const counts = {
      committed: 0,
      aborted: 0,
      error: 0,
      crashedCommitted: 0,
      crashedAborted: 0,
      redriven: 0,
    };
    const delivered =
      how.events && existsSync(sinkFile)
        ? new Set(
            readFileSync(sinkFile, 'utf8')
              .split('\n')
              .filter(Boolean)
              .map((l) => (JSON.parse(l) as { xid: string }).xid),
          )
        : new Set<string>();
    for (const [xid, r] of results) {
      const bId = bBranch.get(xid)!;
      const fa = a.fate(xid, 'a');
      const fb = b.fate(xid, bId);
      const committed = fa === 'committed';
      assert.ok(fa !== 'prepared' && fb !== 'prepared', `${xid} left in doubt: ${fa}/${fb}`);
      assert.equal(fb === 'committed', committed, `${xid} is not atomic: a=${fa} b=${fb} (client saw ${r})`);
      if (r === 'committed') assert.ok(committed, `${xid} was acknowledged as committed but is ${fa}/${fb}`);
      if (r === 'aborted') assert.ok(!committed, `${xid} was reported aborted but committed`);
      if (how.events) assert.equal(delivered.has(xid), committed, `${xid}: events delivered iff committed`);
      counts[r]++;
      const late = (p: TestParticipant) =>
        p.calls.some((c) => c.xid === xid && c.op === 'commit' && c.atMs >= restartedAt);
      if (late(a) || late(b)) counts.redriven++;
      if (r === 'error') counts[committed ? 'crashedCommitted' : 'crashedAborted']++;
    }
    assert.ok(counts.committed > 0, `nothing committed before the crash: ${JSON.stringify(counts)}`);
    return counts;
  }

  it('fail-point after-prepare-before-decision: the undecided are aborted (presumed abort)', async function () {
    const c = await run(this, { failpoint: 'after-prepare-before-decision:exit:30' });
    // Earlier transactions' decisions may have landed without their answer getting out; the one that hit
    // the fail-point and its peers still in phase 1 had no decision and must end aborted.
    assert.ok(c.crashedAborted > 0, `nothing in flight was presumed aborted: ${JSON.stringify(c)}`);
  });

  it('fail-point after-decision-before-phase2: durable decisions are committed after the restart', async function () {
    const c = await run(this, { failpoint: 'after-decision-before-phase2:exit:30' });
    assert.ok(c.redriven > 0, `recovery re-drove no commit: ${JSON.stringify(c)}`);
  });

  it('fail-point mid-phase2: the half-committed are finished after the restart', async function () {
    const c = await run(this, { failpoint: 'mid-phase2:exit:30' });
    assert.ok(c.redriven > 0, `recovery re-drove no commit: ${JSON.stringify(c)}`);
  });

  it('fail-point after-decision-before-relay: every committed transaction’s events are published after the restart', async function () {
    const c = await run(this, { failpoint: 'after-decision-before-relay:exit:30', events: true });
    assert.ok(c.redriven + c.committed > 0, JSON.stringify(c));
  });

  it('kill -9 after a commit finished: the restarted coordinator still answers COMMIT (committed marker)', async function () {
    const prefix = `/dmtp-test/${nameFor(this)}`;
    const id = `fault-${Math.random().toString(36).slice(2, 8)}`;
    const first = await spawnCoordinator({ id, prefix });
    children.push(first);
    const c1 = coordinatorClient(first.address);
    const committed = mintXid(id);
    const aborted = mintXid(id);
    try {
      const r = await c1.commit({ xid: committed, branches: [a.branch('a'), b.branch('b')] }, 5_000);
      assert.equal(r.state, TxState.TX_STATE_COMMITTED);
      const r2 = await c1.commit({ xid: aborted, branches: [a.branch('a'), b.branch('abort')] }, 5_000);
      assert.equal(r2.state, TxState.TX_STATE_ABORTED);
      // Marker keys are shared per mint-time bucket: `{v: 2, d: {<xid>: decidedAtMs}}`.
      const markers = async () =>
        (
          await etcd.kv.range({
            key: Buffer.from(`${prefix}/done/${id}/`),
            range_end: Buffer.from(`${prefix}/done/${id}0`),
          })
        ).kvs;
      await waitFor(
        'the commit finished (record gone, marker written)',
        async () =>
          (await etcd.getAll().prefix(`${prefix}/tx/`).keys()).length === 0 &&
          (await markers()).some((kv) => committed in JSON.parse(kv.value.toString()).d),
      );
      const kvs = await markers();
      for (const kv of kvs)
        assert.notEqual(String(kv.lease), '0', 'committed markers are on the retention lease');
      assert.ok(
        kvs.every((kv) => !(aborted in JSON.parse(kv.value.toString()).d)),
        'an abort writes nothing',
      );
    } finally {
      c1.close();
    }
    await first.kill();
    const second = await spawnCoordinator({ id, prefix });
    children.push(second);
    const c2 = coordinatorClient(second.address);
    try {
      assert.equal((await c2.queryOutcome({ xid: committed })).outcome, Outcome.OUTCOME_COMMIT);
      assert.equal((await c2.queryOutcome({ xid: aborted })).outcome, Outcome.OUTCOME_ABORT);
      assert.equal((await c2.queryOutcome({ xid: mintXid(id) })).outcome, Outcome.OUTCOME_ABORT);
      assert.equal((await c2.get({ xid: committed })).transaction!.state, TxState.TX_STATE_COMMITTED);
    } finally {
      c2.close();
      await etcd.delete().prefix(prefix);
    }
  });

  it('fail-point after-one-phase-commit: the restarted coordinator asks the branch again and answers COMMIT', async function () {
    const prefix = `/dmtp-test/${nameFor(this)}`;
    const id = `fault-${Math.random().toString(36).slice(2, 8)}`;
    const first = await spawnCoordinator({ id, prefix, failpoint: 'after-one-phase-commit:exit:5' });
    children.push(first);
    const c1 = coordinatorClient(first.address);
    const results = new Map<string, Result>();
    try {
      for (let i = 0; i < 10 && first.proc.exitCode === null; i++) {
        const xid = mintXid(id);
        // every 4th one-phase branch refuses, so both outcomes are there
        const branch = i % 4 === 3 ? b.branch('abort') : a.branch('a');
        results.set(xid, 'error');
        try {
          const r = await c1.commit({ xid, branches: [branch] }, 5_000);
          results.set(xid, r.state === TxState.TX_STATE_COMMITTED ? 'committed' : 'aborted');
        } catch {
          break; // the fail-point fired: the branch committed, the coordinator died before answering
        }
      }
    } finally {
      c1.close();
    }
    assert.equal(await first.exited, 137, 'the fail-point did not fire');
    const crashed = [...results].filter(([, r]) => r === 'error').map(([x]) => x);
    assert.equal(crashed.length, 1);
    assert.equal(a.fate(crashed[0], 'a'), 'committed', 'the branch committed before the crash');

    const restartedAt = Date.now();
    const second = await spawnCoordinator({ id, prefix });
    children.push(second);
    const c2 = coordinatorClient(second.address);
    try {
      await waitFor(
        'the log holds only committed markers',
        async () => (await etcd.getAll().prefix(`${prefix}/tx/`).keys()).length === 0,
      );
      for (const [xid, r] of results) {
        const fate = xid === crashed[0] || r === 'committed' ? a.fate(xid, 'a') : b.fate(xid, 'abort');
        const outcome = (await c2.queryOutcome({ xid })).outcome;
        assert.equal(
          outcome === Outcome.OUTCOME_COMMIT,
          fate === 'committed',
          `${xid}: outcome ${Outcome[outcome]} but the branch is ${fate} (client saw ${r})`,
        );
      }
      assert.ok(
        a.calls.some((c) => c.xid === crashed[0] && c.op === 'commit-1pc' && c.atMs >= restartedAt),
        'recovery asked the branch again',
      );
    } finally {
      c2.close();
      await etcd.delete().prefix(prefix);
    }
  });

  it('kill -9 at a random moment under one-phase load: every outcome matches what its branch did', async function () {
    const prefix = `/dmtp-test/${nameFor(this)}`;
    const id = `fault-${Math.random().toString(36).slice(2, 8)}`;
    const first = await spawnCoordinator({ id, prefix });
    children.push(first);
    const client = coordinatorClient(first.address);
    const results = new Map<string, { r: Result; p: TestParticipant; branch: string }>();
    let dead = false;
    void first.exited.then(() => (dead = true));
    const killAfter = 20 + Math.floor(Math.random() * 40);
    let next = 0;
    const worker = async () => {
      while (!dead && next < TOTAL) {
        const i = next++;
        const xid = mintXid(id);
        // every 5th one-phase branch refuses, so both outcomes are in flight at the kill
        const [p, branch] = i % 5 === 4 ? [b, 'abort'] : [a, 'a'];
        results.set(xid, { r: 'error', p, branch });
        try {
          const res = await client.commit({ xid, branches: [p.branch(branch)] }, 5_000);
          results.get(xid)!.r = res.state === TxState.TX_STATE_COMMITTED ? 'committed' : 'aborted';
        } catch {
          // the coordinator died with this one in flight
        }
        if ([...results.values()].filter((x) => x.r !== 'error').length >= killAfter) await first.kill();
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    client.close();
    await first.kill();

    const second = await spawnCoordinator({ id, prefix });
    children.push(second);
    const c2 = coordinatorClient(second.address);
    try {
      await waitFor(
        'recovery finished every one-phase record',
        async () => (await etcd.getAll().prefix(`${prefix}/tx/`).keys()).length === 0,
        30_000,
      );
      let inFlightAtKill = 0;
      for (const [xid, { r, p, branch }] of results) {
        const fate = p.fate(xid, branch);
        const outcome = (await c2.queryOutcome({ xid })).outcome;
        assert.notEqual(fate, 'prepared', `${xid}: a one-phase branch was prepared`);
        assert.equal(
          outcome === Outcome.OUTCOME_COMMIT,
          fate === 'committed',
          `${xid}: outcome ${Outcome[outcome]} but the branch is ${fate} (client saw ${r})`,
        );
        if (r === 'committed') assert.equal(fate, 'committed', `${xid} acknowledged but ${fate}`);
        if (r === 'aborted') assert.notEqual(fate, 'committed', `${xid} reported aborted but committed`);
        if (r === 'error') inFlightAtKill++;
      }
      assert.ok(results.size > killAfter, `too few transactions: ${results.size}`);
      assert.ok(inFlightAtKill > 0 || results.size === TOTAL, 'nothing was in flight at the kill');
    } finally {
      c2.close();
      await etcd.delete().prefix(prefix);
    }
  });

  it('kill -9 at a random moment under load (with PREPARING records: recovery rolls back by itself)', async function () {
    await run(this, {
      killAfterResults: 20 + Math.floor(Math.random() * 40),
      env: { DMTP_LOG_PREPARE: '1' },
    });
  });

  describe('with the file log (a lone coordinator, no etcd log)', () => {
    const fileLog = () => ({
      DMTP_TX_LOG: `file:${path.join(dir, `${Math.random().toString(36).slice(2)}.txlog`)}`,
    });

    it('fail-point after-decision-before-phase2: the decisions on disk are committed after the restart', async function () {
      const c = await run(this, { failpoint: 'after-decision-before-phase2:exit:30', env: fileLog() });
      assert.ok(c.redriven > 0, `recovery re-drove no commit: ${JSON.stringify(c)}`);
    });

    it('kill -9 at a random moment under load: atomic, and every acknowledged commit kept', async function () {
      await run(this, { killAfterResults: 20 + Math.floor(Math.random() * 40), env: fileLog() });
    });
  });
});
