/**
 * `dmtp branch commit|rollback` against a real participant (the txapi SDK, file branch store, a recording
 * resource) served over gRPC, a real coordinator on the etcd log and the registry: an in-doubt branch whose
 * coordinator is gone for good is finished at its participant — its store and resource agree — and an outcome
 * that contradicts a coordinator that answers is refused. `dmtp branch list --participant|--service` reads what
 * the participants' stores hold unfinished (ParticipantAdmin.ListBranches), each branch with its coordinator's
 * answer.
 */
import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  credentials,
  makeGenericClientConstructor,
  status as grpcStatus,
  type ServiceError,
} from '@grpc/grpc-js';
import { Etcd3 } from 'etcd3';
import { mintXid } from '../../../common';
import { Coordinator } from '../../../coordinator';
import {
  ListBranchesRequest,
  ParticipantAdminService,
  ParticipantService,
  type ListBranchesResponse,
} from '../../../proto';
import { BranchState } from '../../../proto/gen/dmtp/v1/types';
import { EtcdRegistry } from '../../../registry';
import { startServer, type RpcServer } from '../../../rpc/server';
import {
  defineResource,
  FileBranchStore,
  Participant,
  participantBinding,
  participantHandlers,
} from '../../../txapi';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { putCommitting } from './committing-record';
import { plainLines, runCli } from './run-cli';

describe('dmtp branch (a real participant, coordinator and registry)', function () {
  this.timeout(30_000);
  let dir: string;
  let participant: Participant;
  let server: RpcServer;
  let prefix: string;
  /** What the resource was told: `commit <xid>`, `rollback <xid>`. */
  let told: string[];

  beforeEach(async function () {
    prefix = `/dmtp-test/${nameFor(this)}`;
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dmtp-branch-cli-'));
    told = [];
    participant = new Participant({
      service: 'shop',
      instanceId: 'shop-1',
      address: '127.0.0.1:0',
      store: new FileBranchStore({ path: path.join(dir, 'branches.jsonl') }),
      resources: [
        defineResource<undefined>({
          name: 'db',
          volatileWork: true,
          prepare: async () => ({ vote: 'prepared' }),
          commit: async (b) => void told.push(`commit ${b.xid}`),
          rollback: async (b) => void told.push(`rollback ${b.xid}`),
        }),
      ],
      recoveryIntervalMs: 3_600_000, // its own recovery stays out of the way
    });
    await participant.start();
    server = await startServer({ services: [participantBinding(participant)], drainDelayMs: 0 });
  });
  afterEach(async () => {
    await server.stop();
    await participant.stop();
    await fs.rm(dir, { recursive: true, force: true });
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    await etcd.delete().prefix(prefix);
    etcd.close();
  });

  /** A branch of `xid` whose business call ran at the participant, its coordinator at `coordinatorAddress`. */
  async function registered(xid: string, coordinatorAddress = '127.0.0.1:1') {
    const key = { xid, branchId: participant.branchIdFor('db') };
    await participant.withBranch(
      { xid, coordinatorAddress, deadlineAtMs: Date.now() + 60_000 },
      'db',
      async () => 1,
    );
    return key;
  }
  /** The same, prepared. */
  async function prepared(xid: string, coordinatorAddress = '127.0.0.1:1') {
    const key = await registered(xid, coordinatorAddress);
    assert.equal((await participant.prepare(key, 'db')).vote, 'prepared');
    return key;
  }
  const status = async (key: { xid: string; branchId: string }) => (await participant.store.get(key))?.status;
  const cli = (...args: string[]) => runCli([...args, '--prefix', prefix, '--timeout', '2s']);

  it('rolls back an in-doubt branch whose coordinator cannot be asked only with --coordinator-gone; again is a no-op', async () => {
    const key = await prepared(mintXid('gone-coord', Date.now()));
    const asked = await cli('branch', 'rollback', key.xid, key.branchId, '--participant', server.address);
    assert.equal(asked.code, 1);
    assert.match(
      plainLines(asked.stderr)[0],
      new RegExp(
        `^dmtp branch rollback: coordinator of ${key.xid} not asked; if gone for good, decide with ` +
          "--coordinator-gone: no coordinator registered as 'dmtp-coordinator'",
      ),
    );
    assert.equal(await status(key), 'prepared', 'nothing sent');

    for (let i = 0; i < 2; i++) {
      const r = await cli(
        'branch',
        'rollback',
        key.xid,
        key.branchId,
        '--participant',
        server.address,
        '--coordinator-gone',
        '--reason',
        'coordinator disk lost; no participant committed',
      );
      assert.equal(r.code, 0, r.stderr);
      assert.equal(
        r.stdout,
        `${key.xid}: branch db@shop-1 rolled back at the participant at ${server.address}\n`,
      );
    }
    const rec = await participant.store.get(key);
    assert.equal(rec?.status, 'rolled_back');
    assert.equal(rec?.reason, 'coordinator disk lost; no participant committed');
    assert.deepEqual(told, [`rollback ${key.xid}`], 'the resource rolled back once');
  });

  it('finds the instance in the registry with --service; commits; refuses in the participant words what it cannot', async () => {
    const registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    try {
      await registry.register({ service: 'shop', instanceId: 'shop-1', address: server.address });
      const key = await prepared(mintXid('gone-coord', Date.now()));
      const r = await cli(
        'branch',
        'commit',
        key.xid,
        key.branchId,
        '--service',
        'shop',
        '--coordinator-gone',
        '--json',
      );
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout), {
        xid: key.xid,
        branch: 'db@shop-1',
        participant: server.address,
        outcome: 'committed',
      });
      assert.equal(await status(key), 'committed');
      assert.deepEqual(told, [`commit ${key.xid}`]);

      // Once committed, a rollback is refused; an unknown branch is named; an instance not registered too.
      const back = await cli(
        'branch',
        'rollback',
        key.xid,
        key.branchId,
        '--service',
        'shop',
        '--coordinator-gone',
      );
      assert.equal(back.code, 1);
      assert.match(plainLines(back.stderr)[0], /^dmtp branch rollback: refused: .*committed/);
      const unknown = mintXid('gone-coord', Date.now());
      const none = await cli(
        'branch',
        'commit',
        unknown,
        'db@shop-1',
        '--service',
        'shop',
        '--coordinator-gone',
      );
      assert.equal(none.code, 1);
      assert.deepEqual(plainLines(none.stderr), [
        `dmtp branch commit: branch db@shop-1 of ${unknown} is unknown here`,
      ]);
      const elsewhere = await cli(
        'branch',
        'commit',
        unknown,
        'db@shop-9',
        '--service',
        'shop',
        '--coordinator-gone',
      );
      assert.equal(elsewhere.code, 1);
      assert.deepEqual(plainLines(elsewhere.stderr), [
        `dmtp branch commit: instance 'shop-9' of service 'shop' is not registered under ${prefix}; give --participant host:port`,
      ]);
      assert.deepEqual(told, [`commit ${key.xid}`], 'nothing else reached the resource');
    } finally {
      await registry.close();
    }
  });

  it('asks the coordinator first: its ABORT refuses a commit, its COMMIT a rollback; what agrees goes through', async () => {
    // A decided commit the coordinator recovers from its log, still sending phase 2 to where the branch once was.
    const committed = mintXid('cli-branch', Date.now());
    await putCommitting(prefix, committed);
    const coord = new Coordinator({ id: 'cli-branch', etcd: { endpoints: ETCD_ENDPOINTS, prefix } });
    const address = await coord.start();
    try {
      const via = ['--participant', server.address, '--coordinator', address];
      // An xid of that coordinator it never heard of: presumed abort.
      const key = await prepared(mintXid('cli-branch', Date.now()), address);
      const commit = await cli('branch', 'commit', key.xid, key.branchId, ...via);
      assert.equal(commit.code, 1);
      assert.deepEqual(plainLines(commit.stderr), [
        `dmtp branch commit: refused: its coordinator reports ABORT for ${key.xid}: the branch must roll back ` +
          '(presumed abort: if it lost its log, decide with --coordinator-gone)',
      ]);
      assert.equal(await status(key), 'prepared');
      const rollback = await cli('branch', 'rollback', key.xid, key.branchId, ...via);
      assert.equal(rollback.code, 0, rollback.stderr);
      assert.equal(await status(key), 'rolled_back');

      const won = await prepared(committed, address);
      const back = await cli('branch', 'rollback', won.xid, won.branchId, ...via);
      assert.equal(back.code, 1);
      assert.deepEqual(plainLines(back.stderr), [
        `dmtp branch rollback: refused: its coordinator reports COMMIT for ${committed}: the branch must commit`,
      ]);
      assert.equal(await status(won), 'prepared');
      const forward = await cli('branch', 'commit', won.xid, won.branchId, ...via);
      assert.equal(forward.code, 0, forward.stderr);
      assert.equal(await status(won), 'committed');
      assert.deepEqual(told, [`rollback ${key.xid}`, `commit ${committed}`]);
    } finally {
      await coord.stop();
    }
  });

  it("lists a participant's in-doubt branches with their coordinator's answer; open ones and by age on request", async () => {
    const committed = mintXid('cli-branch', Date.now());
    await putCommitting(prefix, committed);
    const coord = new Coordinator({ id: 'cli-branch', etcd: { endpoints: ETCD_ENDPOINTS, prefix } });
    const address = await coord.start();
    try {
      const won = await prepared(committed, address);
      await new Promise((r) => setTimeout(r, 20)); // the two prepares a few ms apart: the order is theirs
      const forgotten = await prepared(mintXid('cli-branch', Date.now()), address);
      const working = await registered(mintXid('cli-branch', Date.now()), address);
      const done = await prepared(mintXid('cli-branch', Date.now()), address);
      await participant.commit(done, 'db', false);
      const via = ['--participant', server.address, '--coordinator', address];

      const table = await cli('branch', 'list', ...via);
      assert.equal(table.code, 0, table.stderr);
      const lines = plainLines(table.stdout);
      assert.equal(lines.length, 3, table.stdout);
      assert.match(lines[0], /^XID\s+BRANCH\s+STATE\s+SINCE\s+OUTCOME$/);
      assert.match(lines[1], new RegExp(`^${won.xid}\\s+db@shop-1\\s+prepared\\s+\\S+ ago\\s+COMMIT$`));
      assert.match(lines[2], new RegExp(`^${forgotten.xid}\\s+db@shop-1\\s+prepared\\s+\\S+ ago\\s+ABORT$`));

      const open = await cli('branch', 'list', ...via, '--state', 'open', '--no-outcome', '--json');
      assert.equal(open.code, 0, open.stderr);
      const rows = JSON.parse(open.stdout) as Record<string, unknown>[];
      assert.deepEqual(
        rows.map((r) => [
          r.xid,
          r.branch,
          r.resource,
          r.state,
          r.coordinatorAddress,
          r.answeredBy,
          r.outcome,
        ]),
        [
          [won.xid, 'db@shop-1', 'db', 'prepared', address, 'shop-1', undefined],
          [forgotten.xid, 'db@shop-1', 'db', 'prepared', address, 'shop-1', undefined],
          [working.xid, 'db@shop-1', 'db', 'registered', address, 'shop-1', undefined],
        ],
      );

      const old = await cli('branch', 'list', ...via, '--older-than', '1h');
      assert.equal(old.code, 0, old.stderr);
      assert.equal(old.stdout, `no prepared branch at the participant at ${server.address}\n`);
      assert.deepEqual(told, [`commit ${done.xid}`], 'listing changed nothing');
      assert.equal(await status(won), 'prepared');
    } finally {
      await coord.stop();
    }
  });

  it('lists every registered instance of --service; names the ones that did not answer after the rest', async () => {
    const registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    // An instance serving only the coordinator's Participant service (a participant written by hand).
    const bare = await startServer({
      services: [
        { name: 'shop', definition: ParticipantService, handlers: participantHandlers(participant) },
      ],
      drainDelayMs: 0,
    });
    try {
      await registry.register({ service: 'shop', instanceId: 'shop-1', address: server.address });
      await registry.register({ service: 'shop', instanceId: 'shop-2', address: '127.0.0.1:1' });
      await registry.register({ service: 'shop', instanceId: 'shop-3', address: bare.address });
      const key = await prepared(mintXid('gone-coord', Date.now()));
      const r = await cli('branch', 'list', '--service', 'shop', '--no-outcome');
      assert.equal(r.code, 1);
      const lines = plainLines(r.stdout);
      assert.equal(lines.length, 2, r.stdout);
      assert.match(lines[1], new RegExp(`^${key.xid}\\s+db@shop-1\\s+prepared\\s+\\S+ ago$`));
      assert.deepEqual(
        plainLines(r.stderr).map((l) => l.replace(/\(connect [^)]*\)/, '(…)')),
        [
          'dmtp branch list: instance shop-2: cannot reach the participant at 127.0.0.1:1 (…); its branches are ' +
            'not listed',
          `dmtp branch list: instance shop-3: the participant at ${bare.address} does not list its branches ` +
            '(ParticipantAdmin.ListBranches is not served: not a DMTP SDK participant, or one older than it); its ' +
            'branches are not listed',
        ],
      );

      const gone = await cli('branch', 'list', '--participant', '127.0.0.1:1');
      assert.equal(gone.code, 1);
      assert.match(
        plainLines(gone.stderr).join('\n'),
        /^dmtp branch list: cannot reach the participant at 127\.0\.0\.1:1 \(.*\)$/,
      );
      assert.equal(gone.stdout, '');
      const none = await cli('branch', 'list', '--service', 'nobody');
      assert.equal(none.code, 1);
      assert.deepEqual(plainLines(none.stderr), [
        `dmtp branch list: no instance of service 'nobody' is registered under ${prefix}`,
      ]);
      const both = await cli('branch', 'list', '--service', 'shop', '--participant', server.address);
      assert.equal(both.code, 1);
      assert.match(plainLines(both.stderr)[0], /give --participant or --service, not both/);
      const badState = await cli('branch', 'list', '--service', 'shop', '--state', 'committed');
      assert.equal(badState.code, 1);
      assert.match(
        plainLines(badState.stderr)[0],
        /invalid --state 'committed' \(prepared, registered or open\)/,
      );
      const noSource = await cli(
        'branch',
        'list',
        '--state',
        'open',
        '--database',
        'postgres://x@127.0.0.1:1/x',
      );
      assert.equal(noSource.code, 1);
      assert.match(
        plainLines(noSource.stderr)[0],
        /--state is for a participant's store: give --participant or --service/,
      );
    } finally {
      await bare.stop();
      await registry.close();
    }
  });

  it('ListBranches pages over gRPC and refuses a bad request with INVALID_ARGUMENT', async () => {
    const keys = [];
    for (let i = 0; i < 3; i++) keys.push(await prepared(mintXid('gone-coord', Date.now())));
    const Admin = makeGenericClientConstructor(ParticipantAdminService, 'ParticipantAdmin');
    const client = new Admin(server.address, credentials.createInsecure());
    const list = (req: Partial<ListBranchesRequest>) =>
      new Promise<ListBranchesResponse>((resolve, reject) =>
        client.makeUnaryRequest(
          ParticipantAdminService.listBranches.path,
          ParticipantAdminService.listBranches.requestSerialize,
          ParticipantAdminService.listBranches.responseDeserialize,
          ListBranchesRequest.fromPartial(req),
          (err: ServiceError | null, res?: ListBranchesResponse) => (err ? reject(err) : resolve(res!)),
        ),
      );
    try {
      const first = await list({ pageSize: 2 });
      assert.equal(first.instanceId, 'shop-1');
      assert.equal(first.branches.length, 2);
      const second = await list({ pageSize: 2, pageToken: first.nextPageToken });
      assert.equal(second.nextPageToken, '');
      assert.deepEqual(
        [...first.branches, ...second.branches].map((b) => [b.xid, b.state]),
        keys.map((k) => [k.xid, BranchState.BRANCH_STATE_PREPARED]).sort(),
      );
      for (const [req, message] of [
        [{ pageSize: 1001 }, 'page_size 1001 is out of range 0-1000'],
        [{ states: [BranchState.BRANCH_STATE_COMMITTED] }, /^state BRANCH_STATE_COMMITTED cannot be listed/],
        [{ pageToken: 'eA' }, 'page_token is not one this participant issued'],
      ] as Array<[Partial<ListBranchesRequest>, string | RegExp]>) {
        await assert.rejects(list(req), (err: ServiceError) => {
          assert.equal(err.code, grpcStatus.INVALID_ARGUMENT);
          if (typeof message === 'string') assert.equal(err.details, message);
          else assert.match(err.details, message);
          return true;
        });
      }
    } finally {
      client.close();
    }
  });
});
