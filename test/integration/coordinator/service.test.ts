import { strict as assert } from 'node:assert';
import { connect } from 'node:net';
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { Etcd3 } from 'etcd3';
import { mintXid, type DmtpError } from '../../../common';
import { Coordinator } from '../../../coordinator/coordinator';
import { GrpcParticipantGateway } from '../../../coordinator/participant-gateway';
import { CoordinatorService } from '../../../proto';
import { answeredByServer } from '../../../rpc/not-sent';
import { UnaryTransport } from '../../../rpc/transport-unary';
import { Outcome, TxState } from '../../../proto/gen/dmtp/v1/types';
import { coordinatorClient, type CoordinatorClient } from '../../support/coordinator-client';
import { waitFor } from '../../support/coordinator-wait';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { TestParticipant } from '../../support/test-participant';

const ID = 'coord-it';
const grpcCode = (c: status, text?: RegExp) => (e: ServiceError) =>
  e.code === c && (!text || text.test(e.details))
    ? true
    : assert.fail(`expected ${status[c]}, got ${status[e.code]}: ${e.details}`);

describe('coordinator over real gRPC and the etcd log', function () {
  this.timeout(20_000);
  let etcd: Etcd3;
  let parts: TestParticipant[];
  let unaryOnly: TestParticipant;
  let coord: Coordinator;
  let gateway: GrpcParticipantGateway;
  let client: CoordinatorClient;
  let prefix: string;

  before(async () => {
    etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    parts = await Promise.all(
      [0, 1, 2, 3].map((i) =>
        new TestParticipant({
          name: `p${i}`,
          switches: { voteAbort: ['abort'], hangPrepare: ['hang'], voteReadOnly: ['ro'] },
        }).start(),
      ),
    );
    unaryOnly = await new TestParticipant({ name: 'p-unary', mux: false }).start();
  });
  after(async () => {
    await Promise.all([...parts, unaryOnly].map((p) => p.stop()));
    etcd.close();
  });

  beforeEach(async function () {
    prefix = `/dmtp-test/${nameFor(this)}`;
    gateway = new GrpcParticipantGateway();
    coord = new Coordinator({
      id: ID,
      etcd: { endpoints: ETCD_ENDPOINTS, prefix },
      gateway,
      manager: { prepareTimeoutMs: 500, phase2Backoff: { initialMs: 20, maxMs: 200, multiplier: 2 } },
    });
    client = coordinatorClient(await coord.start());
  });
  afterEach(async () => {
    client.close();
    await coord.stop();
    gateway.close();
    await etcd.delete().prefix(prefix);
  });

  const xid = () => mintXid(ID);
  const fates = (x: string, branches: { p: TestParticipant; id: string }[]) =>
    branches.map(({ p, id }) => p.fate(x, id));
  const logKeys = async () => (await etcd.getAll().prefix(`${prefix}/tx/`).keys()).length;

  for (const n of [2, 5]) {
    it(`commits a transaction with ${n} branches on every branch, then forgets it`, async () => {
      const x = xid();
      const all = [...parts, unaryOnly];
      const bs = Array.from({ length: n }, (_, i) => ({ p: all[i % all.length], id: `b${i}` }));
      const res = await client.commit({ xid: x, branches: bs.map(({ p, id }) => p.branch(id)) });
      assert.equal(res.state, TxState.TX_STATE_COMMITTED);
      await waitFor('every branch committed', () => fates(x, bs).every((f) => f === 'committed'));
      await waitFor('the record removed', async () => (await logKeys()) === 0);
      assert.equal((await client.get({ xid: x })).transaction?.state, TxState.TX_STATE_COMMITTED);
      assert.equal((await client.queryOutcome({ xid: x })).outcome, Outcome.OUTCOME_COMMIT);
    });
  }

  it('carries participant calls over the multiplexed path, and unary to an instance without it', async () => {
    const x = xid();
    await client.commit({ xid: x, branches: [parts[0].branch('m'), unaryOnly.branch('u')] });
    await waitFor(
      'both committed',
      () => parts[0].fate(x, 'm') === 'committed' && unaryOnly.fate(x, 'u') === 'committed',
    );
    assert.deepEqual(gateway.paths(), { [parts[0].address]: 'mux', [unaryOnly.address]: 'unary' });
  });

  it('one branch voting abort rolls back every branch', async () => {
    const x = xid();
    const bs = [
      { p: parts[0], id: 'ok-1' },
      { p: parts[1], id: 'abort-2' },
      { p: parts[2], id: 'ok-3' },
    ];
    const res = await client.commit({ xid: x, branches: bs.map(({ p, id }) => p.branch(id)) });
    assert.equal(res.state, TxState.TX_STATE_ABORTED);
    assert.match(res.abortReason, /abort-2 voted abort/);
    await waitFor('all rolled back', () => fates(x, bs).every((f) => f === 'rolled-back'));
    assert.equal(await logKeys(), 0, 'an abort writes nothing (presumed abort)');
  });

  it('a branch timing out in prepare aborts the transaction', async () => {
    const x = xid();
    const res = await client.commit({ xid: x, branches: [parts[0].branch('ok'), parts[1].branch('hang')] });
    assert.equal(res.state, TxState.TX_STATE_ABORTED);
    assert.match(res.abortReason, /prepare timed out after 500 ms/);
    await waitFor('the prepared branch rolled back', () => parts[0].fate(x, 'ok') === 'rolled-back');
  });

  it('one branch commits in one phase; read-only branches get no phase 2', async () => {
    const one = xid();
    assert.equal(
      (await client.commit({ xid: one, branches: [parts[0].branch('solo')] })).state,
      TxState.TX_STATE_COMMITTED,
    );
    assert.deepEqual(
      parts[0].calls.filter((c) => c.xid === one).map((c) => c.op),
      ['commit-1pc'],
    );
    const ro = xid();
    await client.commit({ xid: ro, branches: [parts[0].branch('w'), parts[1].branch('ro')] });
    await waitFor('the writer committed', () => parts[0].fate(ro, 'w') === 'committed');
    assert.deepEqual(
      parts[1].calls.filter((c) => c.xid === ro).map((c) => c.op),
      ['prepare'],
    );
  });

  it('commit and rollback are idempotent', async () => {
    const x = xid();
    const branches = [parts[0].branch('a'), parts[1].branch('b')];
    assert.equal((await client.commit({ xid: x, branches })).state, TxState.TX_STATE_COMMITTED);
    assert.equal((await client.commit({ xid: x, branches })).state, TxState.TX_STATE_COMMITTED);
    await assert.rejects(
      client.rollback({ xid: x }),
      grpcCode(status.FAILED_PRECONDITION, /already committed/),
    );
    assert.equal(parts[0].calls.filter((c) => c.xid === x && c.op === 'prepare').length, 1);
    const { xid: y } = await client.begin({ initiator: 'test' });
    await client.enlist({ xid: y, branch: parts[2].branch('c') });
    assert.equal((await client.rollback({ xid: y })).state, TxState.TX_STATE_ABORTED);
    assert.equal((await client.rollback({ xid: y })).state, TxState.TX_STATE_ABORTED);
    await waitFor('the enlisted branch rolled back', () => parts[2].fate(y, 'c') === 'rolled-back');
  });

  it('enlist after commit is FAILED_PRECONDITION', async () => {
    const { xid: x } = await client.begin({});
    await client.enlist({ xid: x, branch: parts[0].branch('a') });
    await client.enlist({ xid: x, branch: parts[1].branch('b') });
    await client.commit({ xid: x });
    await assert.rejects(
      client.enlist({ xid: x, branch: parts[2].branch('c') }),
      grpcCode(status.FAILED_PRECONDITION),
    );
  });

  it('an unknown xid: Get NOT_FOUND, QueryOutcome ABORT (presumed abort)', async () => {
    const x = xid();
    await assert.rejects(client.get({ xid: x }), grpcCode(status.NOT_FOUND));
    assert.equal((await client.queryOutcome({ xid: x, branchId: 'b' })).outcome, Outcome.OUTCOME_ABORT);
  });

  it('marks its own error answers on the unary path too, so a caller does not take them for a dead coordinator', async () => {
    // Before, the coordinator's own unary service answered without the dmtp-answered trailer: its "outcome
    // pending" UNAVAILABLE read as a broken connection, and the transaction API left a healthy coordinator out.
    const unary = new UnaryTransport(coord.address!);
    try {
      await assert.rejects(
        unary.invoke({
          method: CoordinatorService.get.path,
          request: CoordinatorService.get.requestSerialize({ xid: xid() }),
          metadata: new Metadata(),
          deadline: Date.now() + 5_000,
        }),
        (e: DmtpError) => {
          assert.equal(e.code, status.NOT_FOUND);
          assert.equal(answeredByServer(e), true);
          return true;
        },
      );
    } finally {
      unary.close();
    }
  });

  it('out-of-range arguments are INVALID_ARGUMENT', async () => {
    await assert.rejects(
      client.begin({ timeoutMs: 24 * 3600_000 }),
      grpcCode(status.INVALID_ARGUMENT, /timeout_ms/),
    );
    await assert.rejects(client.list({ pageSize: 1001 }), grpcCode(status.INVALID_ARGUMENT, /page_size/));
    await assert.rejects(client.list({ state: 42 as TxState }), grpcCode(status.INVALID_ARGUMENT, /state/));
    await assert.rejects(
      client.get({ xid: 'no:such thing' }),
      grpcCode(status.INVALID_ARGUMENT, /malformed xid/),
    );
    const { xid: x } = await client.begin({});
    await assert.rejects(
      client.resolve({ xid: x, outcome: 7 as Outcome }),
      grpcCode(status.INVALID_ARGUMENT, /outcome/),
    );
  });

  it('a request with missing fields names the field', async () => {
    await assert.rejects(client.commit({}), grpcCode(status.INVALID_ARGUMENT, /^xid is required/));
    await assert.rejects(
      client.enlist({ xid: xid() }),
      grpcCode(status.INVALID_ARGUMENT, /^branch is required/),
    );
    const noAddress = { ...parts[0].branch('a'), address: '' };
    await assert.rejects(
      client.enlist({ xid: xid(), branch: noAddress }),
      grpcCode(status.INVALID_ARGUMENT, /branch\.address/),
    );
    await assert.rejects(
      client.resolve({ xid: xid() }),
      grpcCode(status.INVALID_ARGUMENT, /outcome is required/),
    );
    await assert.rejects(
      client.settleBranch({ branchId: 'a' }),
      grpcCode(status.INVALID_ARGUMENT, /^xid is required/),
    );
    await assert.rejects(
      client.settleBranch({ xid: xid() }),
      grpcCode(status.INVALID_ARGUMENT, /^branch_id is required/),
    );
    await assert.rejects(
      client.settleBranch({ xid: 'not an xid', branchId: 'a' }),
      grpcCode(status.INVALID_ARGUMENT),
    );
    assert.equal((await client.list({})).transactions.length, 0, 'refused requests left nothing behind');
  });

  it('a huge list request is refused, a full page is capped at the maximum', async () => {
    await assert.rejects(client.list({ pageSize: 0xffffffff }), grpcCode(status.INVALID_ARGUMENT));
    await assert.rejects(
      client.list({ pageToken: 'x'.repeat(1_000_000) }),
      grpcCode(status.INVALID_ARGUMENT, /page_token/),
    );
    for (let i = 0; i < 5; i++) await client.begin({});
    const page = await client.list({ pageSize: 1000 });
    assert.equal(page.transactions.length, 5);
    assert.equal(page.nextPageToken, '');
  });

  it('garbage bytes on the port and an undecodable message change nothing and get a clear status', async () => {
    const addr = coord.address.split(':');
    await new Promise<void>((resolve) => {
      const s = connect(Number(addr[1]), addr[0], () =>
        s.end(Buffer.from('GET / HTTP/1.1\r\n\r\n\x00\xff garbage \x13\x37'.repeat(50))),
      );
      s.on('data', () => undefined);
      s.on('error', () => resolve());
      s.on('close', () => resolve());
    });
    const garbage = await new Promise<ServiceError>((resolve) =>
      client.raw.makeUnaryRequest(
        CoordinatorService.commit.path,
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]),
        { deadline: Date.now() + 5_000 },
        (err) => resolve(err!),
      ),
    );
    assert.equal(garbage.code, status.INVALID_ARGUMENT, garbage.details);
    assert.match(garbage.details, /malformed Commit request/);
    assert.equal((await client.list({})).transactions.length, 0);
    const x = xid();
    assert.equal(
      (await client.commit({ xid: x, branches: [parts[0].branch('after')] })).state,
      TxState.TX_STATE_COMMITTED,
    );
  });
});
