/**
 * Participant metrics on /metrics after real transactions: two PostgreSQL banks (the PostgreSQL branch store and
 * pgResource), the real coordinator on its etcd log, and an initiator. Each bank serves its ParticipantMetrics
 * over HTTP; the test scrapes them.
 */
import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { Coordinator } from '../../../coordinator/coordinator';
import { MemoryEventSink } from '../../../coordinator/event-sink';
import { createDmtp, ParticipantMetrics, txGrpcInterceptor, type Dmtp } from '../../../txapi';
import type { MetricsServer } from '../../../rpc/metrics';
import { waitFor } from '../../support/coordinator-wait';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { BANK, balances, setupAccounts, startBank, type Bank } from '../../support/txapi-bank';
import { JsonClient } from '../../support/txapi-grpc';
import { createTestDb, preparedGids, type TestDb } from '../../support/txapi-pg';
import { samplesAt, value, type Sample } from './scrape';

describe('participant metrics on /metrics after real transactions', function () {
  this.timeout(30_000);
  let etcd: Etcd3;
  let dbA: TestDb;
  let dbB: TestDb;
  let prefix: string;
  let coord: Coordinator;
  let dmtp: Dmtp;
  let banks: Bank[];
  let endpoints: MetricsServer[];
  let clients: JsonClient[];

  before(async function () {
    etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    dbA = await createTestDb(this, '_a');
    dbB = await createTestDb(this, '_b');
  });
  after(async () => {
    await dbA?.drop();
    await dbB?.drop();
    etcd.close();
  });

  beforeEach(async function () {
    prefix = `/dmtp-test/${nameFor(this)}`;
    await setupAccounts(dbA.url, { alice: 100 });
    await setupAccounts(dbB.url, { bob: 100 });
    coord = new Coordinator({
      id: 'pm-coord',
      etcd: { endpoints: ETCD_ENDPOINTS, prefix },
      eventSink: new MemoryEventSink(),
      manager: { phase2Backoff: { initialMs: 20, maxMs: 100, multiplier: 2 } },
    });
    const address = await coord.start();
    dmtp = createDmtp({ coordinator: { id: 'pm-coord', address }, initiator: 'metrics-test' });
    banks = [];
    endpoints = [];
    clients = [];
  });
  afterEach(async () => {
    for (const c of clients) c.close();
    for (const e of endpoints) await e.close();
    for (const b of banks) await b.stop();
    dmtp.close();
    await coord.stop();
    await etcd.delete().prefix(prefix);
    assert.deepEqual(await preparedGids(dbA.url), [], 'no prepared transaction left in bank A');
    assert.deepEqual(await preparedGids(dbB.url), [], 'no prepared transaction left in bank B');
  });

  /** A bank with its metrics served on a free port: the bank, a client to it, and a scrape of its metrics. */
  const bank = async (db: TestDb, service: string) => {
    const metrics = new ParticipantMetrics();
    const b = await startBank({ url: db.url, service, instanceId: `${service}-1`, metrics });
    banks.push(b);
    const endpoint = await metrics.serve(0);
    endpoints.push(endpoint);
    const client = new JsonClient(b.address, BANK.paths, [txGrpcInterceptor]);
    clients.push(client);
    return { client, scrape: () => samplesAt(endpoint.address) };
  };
  const branches = (s: Sample[], outcome: string) => value(s, 'dmtp_participant_branches_total', { outcome });
  const steps = (s: Sample[], step: string) =>
    value(s, 'dmtp_participant_resource_duration_seconds_count', { resource: 'accounts', step });

  it('counts each bank’s branches, votes and resource steps through a commit and a rollback', async () => {
    const [a, b] = [await bank(dbA, 'pm-bank-a'), await bank(dbB, 'pm-bank-b')];
    const before = await a.scrape();
    assert.equal(branches(before, 'opened'), 0);
    assert.equal(value(before, 'dmtp_participant_branches', { state: 'prepared' }), 0);

    await dmtp.transaction(async () => {
      await a.client.call(BANK.debit, { account: 'alice', amount: 30 });
      await b.client.call(BANK.credit, { account: 'bob', amount: 30 });
    });
    await assert.rejects(
      dmtp.transaction(async () => {
        await a.client.call(BANK.debit, { account: 'alice', amount: 500 }); // insufficient funds
      }),
      /insufficient funds in alice/,
    );
    assert.deepEqual(await balances(dbA.url), { alice: 70 });
    assert.deepEqual(await balances(dbB.url), { bob: 130 });

    // Phase 2 is acknowledged after the Commit call returns: wait until both banks recorded it.
    let sa: Sample[] = [];
    let sb: Sample[] = [];
    await waitFor('both banks committed their branch', async () => {
      [sa, sb] = [await a.scrape(), await b.scrape()];
      return branches(sa, 'committed') === 1 && branches(sb, 'committed') === 1;
    });
    assert.equal(branches(sa, 'opened'), 2, 'bank A: the transfer’s branch and the refused debit’s');
    assert.equal(branches(sa, 'prepared'), 1);
    assert.equal(branches(sa, 'rolled_back'), 1, 'the refused debit rolled its branch back');
    assert.equal(
      value(sa, 'dmtp_participant_prepare_votes_total', { resource: 'accounts', vote: 'prepared' }),
      1,
    );
    assert.equal(steps(sa, 'begin'), 2);
    assert.equal(steps(sa, 'prepare'), 1);
    assert.equal(steps(sa, 'commit'), 1);
    assert.equal(steps(sa, 'rollback'), 1);
    assert.equal(branches(sb, 'opened'), 1);
    assert.equal(branches(sb, 'rolled_back'), 0);
    for (const s of [sa, sb]) {
      assert.equal(value(s, 'dmtp_participant_branches', { state: 'registered' }), 0);
      assert.equal(value(s, 'dmtp_participant_branches', { state: 'prepared' }), 0);
      assert.equal(value(s, 'dmtp_participant_prepared_oldest_seconds'), 0);
      assert.equal(value(s, 'dmtp_participant_store_failures_total'), 0);
      assert.equal(value(s, 'dmtp_participant_resource_failures_total'), 0);
      assert.ok(value(s, 'dmtp_participant_store_duration_seconds_count', { op: 'transition' }) >= 2);
    }
  });
});
