/**
 * `dmtp branch commit|rollback` against a real participant (the txapi SDK, file branch store, a recording
 * resource) served over gRPC, a real coordinator on the etcd log and the registry: an in-doubt branch whose
 * coordinator is gone for good is finished at its participant — its store and resource agree — and an outcome
 * that contradicts a coordinator that answers is refused.
 */
import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Etcd3 } from 'etcd3';
import { mintXid } from '../../../common';
import { Coordinator } from '../../../coordinator';
import { EtcdRegistry } from '../../../registry';
import { startServer, type RpcServer } from '../../../rpc/server';
import { defineResource, FileBranchStore, Participant, participantBinding } from '../../../txapi';
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

  /** A branch of `xid` prepared at the participant, its coordinator at `coordinatorAddress`. */
  async function prepared(xid: string, coordinatorAddress = '127.0.0.1:1') {
    const key = { xid, branchId: participant.branchIdFor('db') };
    await participant.withBranch(
      { xid, coordinatorAddress, deadlineAtMs: Date.now() + 60_000 },
      'db',
      async () => 1,
    );
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
});
