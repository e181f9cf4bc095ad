/**
 * ParticipantMetrics around a real Participant: its branch store is the real file store (in a temporary folder),
 * its resources are fakes that record nothing and fail on demand, and the business calls and phase calls are
 * made on the Participant directly (no server). The metrics are read from the prom-client registry.
 */
import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { mintXid } from '../../../common';
import {
  BranchRolledBackError,
  defineResource,
  FileBranchStore,
  Participant,
  ParticipantMetrics,
  type ParticipantOptions,
  type Resource,
} from '../../../txapi';
import { compileParticipantOptions, describeConfig } from '../../../txapi/participant-options';
import { nameFor } from '../../support/env';

/** The value of the series `name` whose labels include `labels` (0 when none); histograms by their `_count`. */
async function read(m: ParticipantMetrics, name: string, labels: Record<string, string> = {}) {
  const metric = m.registry.getSingleMetric(name.replace(/_count$/, ''));
  assert.ok(metric, `no metric ${name}`);
  const { values } = await metric.get();
  return values
    .filter((v) => (name.endsWith('_count') ? (v as { metricName?: string }).metricName === name : true))
    .filter((v) => Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want))
    .reduce((n, v) => n + v.value, 0);
}

describe('ParticipantMetrics (file store, fake resources)', () => {
  let dir: string;
  let storePath: string;
  let metrics: ParticipantMetrics;
  let p: Participant;
  let failCommit: number;
  let vote: 'prepared' | 'abort';
  const coordinatorAddress = '127.0.0.1:1';

  const resource = () =>
    defineResource<{ id: number }>({
      name: 'db',
      begin: async () => ({ id: 1 }),
      prepare: async () => (vote === 'abort' ? { vote: 'abort', reason: 'no funds' } : { vote: 'prepared' }),
      commit: async () => {
        if (failCommit > 0) {
          failCommit--;
          throw new Error('database gone for a moment');
        }
        return { committed: true };
      },
      rollback: async () => undefined,
    });
  const optionsFor = (m: ParticipantMetrics): ParticipantOptions =>
    m.instrument({
      service: 'metered',
      instanceId: 'm-1',
      address: '127.0.0.1:5001',
      store: new FileBranchStore({ path: storePath }),
      resources: [resource()],
      recoveryIntervalMs: 3_600_000,
    });
  const wire = () => ({ xid: mintXid('c1'), coordinatorAddress, deadlineAtMs: Date.now() + 60_000 });
  const keyOf = (xid: string) => ({ xid, branchId: 'db@m-1' });

  beforeEach(async function () {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), `${nameFor(this, 30)}-`));
    storePath = path.join(dir, 'b.jsonl');
    failCommit = 0;
    vote = 'prepared';
    metrics = new ParticipantMetrics();
    p = new Participant(optionsFor(metrics));
    await p.start();
  });
  afterEach(async () => {
    await p.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('follows a branch through both phases: outcomes, vote, open branches by state, step latencies', async () => {
    for (const outcome of ['opened', 'prepared', 'committed', 'rolled_back'])
      assert.equal(await read(metrics, 'dmtp_participant_branches_total', { outcome }), 0, outcome);

    const w = wire();
    assert.equal(await p.withBranch(w, 'db', async () => 'done'), 'done');
    assert.equal(await read(metrics, 'dmtp_participant_branches_total', { outcome: 'opened' }), 1);
    assert.equal(await read(metrics, 'dmtp_participant_branches', { state: 'registered' }), 1);

    assert.deepEqual(await p.prepare(keyOf(w.xid), 'db'), { vote: 'prepared' });
    assert.equal(await read(metrics, 'dmtp_participant_prepare_votes_total', { vote: 'prepared' }), 1);
    assert.equal(await read(metrics, 'dmtp_participant_branches', { state: 'registered' }), 0);
    assert.equal(await read(metrics, 'dmtp_participant_branches', { state: 'prepared' }), 1);
    assert.ok((await read(metrics, 'dmtp_participant_prepared_oldest_seconds')) >= 0);

    await p.commit(keyOf(w.xid), 'db', false);
    assert.equal(await read(metrics, 'dmtp_participant_branches_total', { outcome: 'prepared' }), 1);
    assert.equal(await read(metrics, 'dmtp_participant_branches_total', { outcome: 'committed' }), 1);
    assert.equal(await read(metrics, 'dmtp_participant_branches', { state: 'prepared' }), 0);
    assert.equal(await read(metrics, 'dmtp_participant_prepared_oldest_seconds'), 0);
    for (const step of ['begin', 'prepare', 'commit']) {
      assert.equal(
        await read(metrics, 'dmtp_participant_resource_duration_seconds_count', { resource: 'db', step }),
        1,
        step,
      );
    }
    assert.ok(
      (await read(metrics, 'dmtp_participant_store_duration_seconds_count', { op: 'transition' })) >= 3,
    );
    assert.equal(await read(metrics, 'dmtp_participant_store_failures_total'), 0);
  });

  it('counts an abort vote, a failed phase-2 commit (the branch stays prepared), and a null rollback', async () => {
    const aborted = wire();
    await p.withBranch(aborted, 'db', async () => undefined);
    vote = 'abort';
    assert.equal((await p.prepare(keyOf(aborted.xid), 'db')).vote, 'abort');
    assert.equal(await read(metrics, 'dmtp_participant_prepare_votes_total', { vote: 'abort' }), 1);
    assert.equal(await read(metrics, 'dmtp_participant_branches_total', { outcome: 'rolled_back' }), 1);

    vote = 'prepared';
    const flaky = wire();
    await p.withBranch(flaky, 'db', async () => undefined);
    await p.prepare(keyOf(flaky.xid), 'db');
    failCommit = 1;
    await assert.rejects(p.commit(keyOf(flaky.xid), 'db', false), /database gone/);
    assert.equal(
      await read(metrics, 'dmtp_participant_resource_failures_total', { resource: 'db', step: 'commit' }),
      1,
    );
    assert.equal(await read(metrics, 'dmtp_participant_branches', { state: 'prepared' }), 1);
    await p.commit(keyOf(flaky.xid), 'db', false);
    assert.equal(await read(metrics, 'dmtp_participant_branches', { state: 'prepared' }), 0);

    // A rollback before any business call: a null rollback, recorded; the late call is refused by the rules,
    // which is not a store failure.
    const late = wire();
    await p.rollback(keyOf(late.xid), 'db', 'timed out at the initiator');
    assert.equal(await read(metrics, 'dmtp_participant_branches_total', { outcome: 'rolled_back' }), 2);
    await assert.rejects(
      p.withBranch(late, 'db', async () => 'too late'),
      (err: unknown) => err instanceof BranchRolledBackError,
    );
    assert.equal(await read(metrics, 'dmtp_participant_store_failures_total'), 0);
    assert.equal(await read(metrics, 'dmtp_participant_branches_total', { outcome: 'opened' }), 2);
  });

  it("seeds the open-branch gauges from the store at start, counting only this instance's branches", async () => {
    const w = wire();
    await p.withBranch(w, 'db', async () => undefined);
    await p.prepare(keyOf(w.xid), 'db');
    await p.stop();
    // Another instance's prepared branch in the same store (a shared store lists every instance's).
    const other = new FileBranchStore({ path: storePath });
    await other.open();
    const foreign = { xid: mintXid('c1'), branchId: 'db@m-2' };
    await other.transition(foreign, 'registered', { resource: 'db', coordinatorAddress });
    await other.transition(foreign, 'prepared');
    await other.close();

    metrics = new ParticipantMetrics();
    p = new Participant(optionsFor(metrics));
    await p.start();
    assert.equal(await read(metrics, 'dmtp_participant_branches', { state: 'prepared' }), 1);
    assert.equal(await read(metrics, 'dmtp_participant_branches_total', { outcome: 'prepared' }), 0);
    await p.commit(keyOf(w.xid), 'db', false);
    assert.equal(await read(metrics, 'dmtp_participant_branches', { state: 'prepared' }), 0);
  });

  it('drops a branch another instance finished once a list of its state no longer holds it', async () => {
    await p.stop();
    // The store wrapped alone; the "other instance" writes to the same store underneath it.
    const inner = new FileBranchStore({ path: path.join(dir, 'shared.jsonl') });
    const m = new ParticipantMetrics();
    const store = m.store(inner, 'm-1');
    await store.open();
    try {
      const mine = { xid: mintXid('c1'), branchId: 'db@m-1' };
      await store.transition(mine, 'registered', { resource: 'db', coordinatorAddress });
      await store.transition(mine, 'prepared');
      assert.equal(await read(m, 'dmtp_participant_branches', { state: 'prepared' }), 1);
      await inner.transition(mine, 'committed'); // finished by a sibling, unseen by this wrapper
      assert.equal(await read(m, 'dmtp_participant_branches', { state: 'prepared' }), 1, 'not seen yet');
      await new Promise((r) => setTimeout(r, 2)); // the list begins after this process last saw the branch
      await store.list(['registered']);
      assert.equal(
        await read(m, 'dmtp_participant_branches', { state: 'prepared' }),
        1,
        'not a prepared list',
      );
      await store.list(['prepared']);
      assert.equal(await read(m, 'dmtp_participant_branches', { state: 'prepared' }), 0);
    } finally {
      await store.close();
    }
    p = new Participant(optionsFor(new ParticipantMetrics())); // for afterEach
    await p.start();
  });

  it('the instrumented store still names what it wraps (the participant logs it at start)', () => {
    const options = optionsFor(new ParticipantMetrics());
    assert.equal(
      describeConfig(compileParticipantOptions(options)).store,
      'FileBranchStore (with ParticipantMetrics)',
    );
  });

  it('keeps optional resource steps absent, and instruments one participant only', () => {
    const bare: Resource = defineResource({
      name: 'bare',
      volatileWork: true,
      prepare: async () => ({ vote: 'read_only' }),
      commit: async () => undefined,
      rollback: async () => undefined,
    });
    const wrapped = new ParticipantMetrics().resource(bare);
    assert.equal(wrapped.volatileWork, true);
    for (const step of ['begin', 'markCall', 'undoCall', 'inDoubt', 'start', 'stop'] as const)
      assert.equal(wrapped[step], undefined, step);
    assert.throws(
      () => metrics.instrument({ ...optionsFor(new ParticipantMetrics()), instanceId: 'm-9' }),
      /already instruments participant instance 'm-1'/,
    );
  });
});
