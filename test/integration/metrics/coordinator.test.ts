import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { mintXid, parseXid } from '../../../common';
import { Coordinator } from '../../../coordinator/coordinator';
import { MemoryEventSink } from '../../../coordinator/event-sink';
import { Outcome, TxState } from '../../../proto/gen/dmtp/v1/types';
import { coordinatorClient, type CoordinatorClient } from '../../support/coordinator-client';
import { waitFor } from '../../support/coordinator-wait';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { TestParticipant } from '../../support/test-participant';
import { labelValues, samplesAt, scrape, value, XID_LIKE, type Sample } from './scrape';

const looksLikeXid = (v: string) => {
  try {
    parseXid(v);
    return true;
  } catch {
    return XID_LIKE.test(v);
  }
};

describe('coordinator metrics on /metrics after real transactions', function () {
  this.timeout(20_000);
  let etcd: Etcd3;
  let voter: TestParticipant;
  let flaky: TestParticipant;
  let coord: Coordinator;
  let client: CoordinatorClient;
  let sink: MemoryEventSink;
  let prefix: string;
  const ID = 'coord-metrics';

  before(async () => {
    etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    voter = await new TestParticipant({ name: 'm-voter', switches: { voteAbort: ['abort'] } }).start();
    flaky = await new TestParticipant({ name: 'm-flaky', switches: { failCommitTimes: 2 } }).start();
  });
  after(async () => {
    await Promise.all([voter.stop(), flaky.stop()]);
    etcd.close();
  });

  beforeEach(async function () {
    prefix = `/dmtp-test/${nameFor(this)}`;
    sink = new MemoryEventSink();
    coord = new Coordinator({
      id: ID,
      etcd: { endpoints: ETCD_ENDPOINTS, prefix },
      eventSink: sink,
      metricsPort: 0,
      manager: {
        prepareTimeoutMs: 1_000,
        phase2Backoff: { initialMs: 20, maxMs: 100, multiplier: 2 },
        relayBackoff: { initialMs: 20, maxMs: 100, multiplier: 2 },
      },
    });
    client = coordinatorClient(await coord.start());
  });
  afterEach(async () => {
    client.close();
    await coord.stop();
    await etcd.delete().prefix(prefix);
  });

  const metrics = () => samplesAt(coord.metricsAddress!);
  /** Scrapes until `ok` holds for what it read, and returns that scrape. */
  const scrapeUntil = async (what: string, ok: (s: Sample[]) => boolean): Promise<Sample[]> => {
    let last: Sample[] = [];
    await waitFor(what, async () => ok((last = await metrics())));
    return last;
  };

  it('counts begun, committed and aborted transactions, times commits, and counts phase-2 retries', async () => {
    const before = await metrics();
    assert.equal(value(before, 'dmtp_coordinator_transactions_total', { outcome: 'committed' }), 0);

    const twoPhase = mintXid(ID);
    const res = await client.commit({ xid: twoPhase, branches: [voter.branch('a'), flaky.branch('b')] });
    assert.equal(res.state, TxState.TX_STATE_COMMITTED);
    const onePhase = mintXid(ID);
    assert.equal(
      (await client.commit({ xid: onePhase, branches: [voter.branch('c')] })).state,
      TxState.TX_STATE_COMMITTED,
    );
    const aborted = mintXid(ID);
    assert.equal(
      (await client.commit({ xid: aborted, branches: [voter.branch('abort-d'), flaky.branch('e')] })).state,
      TxState.TX_STATE_ABORTED,
    );
    // flaky fails its phase-2 Commit twice before it acknowledges: two retries, then the transaction finishes.
    await waitFor('the two-phase transaction finished', () => flaky.fate(twoPhase, 'b') === 'committed');
    await scrapeUntil('nothing in flight', (s) => value(s, 'dmtp_coordinator_in_flight') === 0);

    const s = await metrics();
    const by = (outcome: string) => value(s, 'dmtp_coordinator_transactions_total', { outcome });
    assert.equal(by('begun'), 3);
    assert.equal(by('committed'), 2);
    assert.equal(by('aborted'), 1);
    assert.equal(value(s, 'dmtp_coordinator_prepared_total'), 1, 'only the two-phase commit passed phase 1');
    assert.equal(value(s, 'dmtp_coordinator_commit_duration_seconds_count'), 2);
    assert.ok(value(s, 'dmtp_coordinator_commit_duration_seconds_sum') > 0);
    assert.equal(
      value(s, 'dmtp_coordinator_commit_duration_seconds_bucket', { le: '+Inf' }),
      2,
      'every commit lands in the +Inf bucket',
    );
    assert.equal(value(s, 'dmtp_coordinator_phase2_retries_total', { kind: 'commit' }), 2);
    assert.equal(value(s, 'dmtp_coordinator_in_doubt'), 0);
    // The 2PC's COMMITTING record and the 1PC's onePhase record, each finished later; the abort wrote nothing.
    assert.equal(value(s, 'dmtp_coordinator_log_writes_total'), 4);
    const batches = value(s, 'dmtp_coordinator_log_batches_total');
    assert.ok(batches >= 1 && batches <= 4, `${batches} etcd txns for 4 writes`);
    for (const state of ['active', 'preparing', 'committing', 'aborting']) {
      assert.equal(value(s, 'dmtp_coordinator_transactions', { state }), 0, state);
    }
    assert.ok(
      s.every((x) => x.labels.coordinator === ID),
      'every series names its coordinator',
    );
    assertNoXidLabel(s, [twoPhase, onePhase, aborted]);
  });

  it("counts operators' actions: a transaction decided by resolve, a branch settled", async () => {
    const before = await metrics();
    assert.equal(value(before, 'dmtp_coordinator_operator_actions_total', { action: 'resolve' }), 0);
    assert.equal(value(before, 'dmtp_coordinator_operator_actions_total', { action: 'settle' }), 0);
    // An ACTIVE transaction whose only branch is where nobody listens: resolved (abort), its rollback never
    // acknowledged, the branch settled.
    const { xid } = await client.begin({ timeoutMs: 60_000 });
    const gone = {
      branchId: 'gone',
      service: 'gone',
      instanceId: 'gone-1',
      address: '127.0.0.1:1',
      resource: 'db',
    };
    await client.enlist({ xid, branch: gone });
    assert.equal(
      (await client.resolve({ xid, outcome: Outcome.OUTCOME_ABORT })).state,
      TxState.TX_STATE_ABORTED,
    );
    const settled = await client.settleBranch({ xid, branchId: 'gone', reason: 'its database is gone' });
    assert.equal(settled.settled, true);
    const s = await scrapeUntil(
      'both actions counted',
      (x) => value(x, 'dmtp_coordinator_operator_actions_total', { action: 'settle' }) === 1,
    );
    assert.equal(value(s, 'dmtp_coordinator_operator_actions_total', { action: 'resolve' }), 1);
    // A refused one counts nothing.
    await assert.rejects(client.resolve({ xid, outcome: Outcome.OUTCOME_COMMIT }));
    assert.equal(value(await metrics(), 'dmtp_coordinator_operator_actions_total', { action: 'resolve' }), 1);
    assertNoXidLabel(s, [xid]);
  });

  it('shows the outbox backlog and the committing transaction while the event sink fails', async () => {
    sink.failing = true;
    const x = mintXid(ID);
    const event = {
      topic: 'orders',
      key: Buffer.from('k'),
      value: Buffer.from('v'),
      headers: {},
      sequence: 0,
    };
    const res = await client.commit({ xid: x, branches: [voter.branch('a')], events: [event, { ...event }] });
    assert.equal(res.state, TxState.TX_STATE_COMMITTED);
    const during = await scrapeUntil(
      'a failed publish attempt',
      (s) => value(s, 'dmtp_coordinator_outbox_publish_failures_total') >= 1,
    );
    assert.equal(value(during, 'dmtp_coordinator_outbox_backlog'), 1);
    assert.equal(value(during, 'dmtp_coordinator_outbox_backlog_events'), 2);
    assert.equal(value(during, 'dmtp_coordinator_in_flight'), 1);
    assert.equal(value(during, 'dmtp_coordinator_in_doubt'), 1);
    assert.equal(value(during, 'dmtp_coordinator_transactions', { state: 'committing' }), 1);

    sink.failing = false;
    const after = await scrapeUntil(
      'the backlog drained',
      (s) =>
        value(s, 'dmtp_coordinator_outbox_backlog') === 0 && value(s, 'dmtp_coordinator_in_flight') === 0,
    );
    assert.equal(value(after, 'dmtp_coordinator_outbox_published_total'), 1);
    assert.equal(value(after, 'dmtp_coordinator_outbox_oldest_seconds'), 0);
    assert.equal(sink.published.length, 1);
    assertNoXidLabel(after, [x]);
  });

  it('keeps two coordinators in one process apart, answers 404 off /metrics, and closes it on stop', async () => {
    const other = new Coordinator({
      id: `${ID}-2`,
      etcd: { endpoints: ETCD_ENDPOINTS, prefix },
      metricsPort: 0,
    });
    const otherClient = coordinatorClient(await other.start());
    const otherMetrics = other.metricsAddress!;
    try {
      const x = mintXid(`${ID}-2`);
      await otherClient.commit({ xid: x, branches: [voter.branch('solo')] });
      const mine = await metrics();
      const theirs = await samplesAt(other.metricsAddress!);
      assert.equal(value(mine, 'dmtp_coordinator_transactions_total', { outcome: 'committed' }), 0);
      assert.equal(value(theirs, 'dmtp_coordinator_transactions_total', { outcome: 'committed' }), 1);
      assert.ok(theirs.every((x) => x.labels.coordinator === `${ID}-2`));
      const wrong = await scrape(other.metricsAddress!, '/nope');
      assert.equal(wrong.status, 404);
      const ok = await scrape(other.metricsAddress!);
      assert.match(ok.type, /^text\/plain; version=0\.0\.4/);
    } finally {
      otherClient.close();
      await other.stop();
    }
    await assert.rejects(scrape(otherMetrics), /ECONNREFUSED/, 'stop() closes the metrics endpoint');
  });
});

function assertNoXidLabel(samples: Sample[], xids: string[]): void {
  const values = labelValues(samples);
  for (const v of values) assert.ok(!looksLikeXid(v), `label value '${v}' looks like an xid`);
  for (const x of xids) assert.ok(!values.includes(x), `xid ${x} appears as a label value`);
}
