import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { Coordinator } from '../../../coordinator';
import { decodeRecord } from '../../../coordinator/log/record-codec';
import { TxState } from '../../../proto/gen/dmtp/v1/types';
import { EtcdRegistry } from '../../../registry';
import { coordinatorClient, type CoordinatorClient } from '../../support/coordinator-client';
import { waitFor } from '../../support/coordinator-wait';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { TestParticipant } from '../../support/test-participant';
import { testPki, tlsEnv } from '../../support/tls';
import { plainLines, runCli } from './run-cli';

interface TxJson {
  xid: string;
  state: string;
  initiator: string;
  branches: {
    branchId: string;
    service: string;
    state: string;
    attempts: number;
    lastError: string;
    nextRetryAtMs: number;
    settled: boolean;
  }[];
}

describe('dmtp tx (a real coordinator on the etcd log)', function () {
  this.timeout(30_000);
  let coord: Coordinator;
  let client: CoordinatorClient;
  let address: string;
  let prefix: string;
  let id: string;

  beforeEach(async function () {
    const name = nameFor(this);
    prefix = `/dmtp-test/${name}`;
    id = name.slice(-24).replace(/^-+/, '');
    await startCoordinator();
  });
  /** The test's coordinator (again, after a stop: same id and log), its address and a client of it. */
  async function startCoordinator(): Promise<void> {
    coord = new Coordinator({
      id,
      etcd: { endpoints: ETCD_ENDPOINTS, prefix },
      manager: { phase2Backoff: { initialMs: 200, maxMs: 1_000, multiplier: 2 }, phase2CallTimeoutMs: 500 },
    });
    address = await coord.start();
    client = coordinatorClient(address);
  }
  afterEach(async () => {
    client.close();
    await coord.stop();
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    await etcd.delete().prefix(prefix);
    etcd.close();
  });

  /** An ACTIVE transaction with one branch on a participant that is not there (port 1 refuses). */
  async function begin(branchId = 'inv-1'): Promise<string> {
    const { xid } = await client.begin({ timeoutMs: 60_000, initiator: 'order' });
    await client.enlist({
      xid,
      branch: { branchId, service: 'inventory', instanceId: 'inv-a', address: '127.0.0.1:1', resource: 'db' },
    });
    return xid;
  }

  const cli = (...args: string[]) => runCli([...args, '--coordinator', address]);

  it('tx list shows live transactions, filtered by --state, --older-than, --service and --instance; --json for scripts', async () => {
    const xid = await begin();
    const table = await cli('tx', 'list');
    assert.equal(table.code, 0, table.stderr);
    const [head, row, ...more] = plainLines(table.stdout);
    assert.match(head, /^XID +STATE +AGE +BRANCHES +DEADLINE +INITIATOR +LAST ERROR$/);
    assert.match(row, new RegExp(`^${xid} +ACTIVE +\\S+ +1 +in \\S+ +order +-$`));
    assert.deepEqual(more, []);

    const json = JSON.parse((await cli('tx', 'list', '--json', '--state', 'active')).stdout) as TxJson[];
    assert.deepEqual(
      json.map((t) => [t.xid, t.state, t.initiator, t.branches.map((b) => b.branchId)]),
      [[xid, 'ACTIVE', 'order', ['inv-1']]],
    );
    assert.deepEqual(JSON.parse((await cli('tx', 'list', '--json', '--state', 'preparing')).stdout), []);
    assert.deepEqual(JSON.parse((await cli('tx', 'list', '--json', '--older-than', '1h')).stdout), []);
    assert.equal((await cli('tx', 'list', '--state', 'committing')).stdout, 'no transactions\n');

    // By participant: the transactions waiting on one service or instance (one gone for good, say).
    const byInstance = JSON.parse(
      (await cli('tx', 'list', '--json', '--instance', 'inv-a')).stdout,
    ) as TxJson[];
    assert.deepEqual(
      byInstance.map((t) => t.xid),
      [xid],
    );
    const byService = JSON.parse(
      (await cli('tx', 'list', '--json', '--service', 'inventory')).stdout,
    ) as TxJson[];
    assert.deepEqual(
      byService.map((t) => t.xid),
      [xid],
    );
    assert.equal((await cli('tx', 'list', '--instance', 'inv-b')).stdout, 'no transactions\n');
    assert.equal((await cli('tx', 'list', '--service', 'payment')).stdout, 'no transactions\n');
  });

  it('resolve --abort decides; show then has the branch, its attempts, last error and next retry; a second resolve is refused', async () => {
    const xid = await begin();
    const resolved = await cli('tx', 'resolve', xid, '--abort', '--reason', 'participant gone');
    assert.equal(resolved.code, 0, resolved.stderr);
    assert.match(resolved.stdout, new RegExp(`^${xid}: ABORT(ING|ED)\\n$`));

    // Rolling the branch back fails (nobody listens on port 1) and is retried: the show an operator needs.
    const shown = (await waitFor('a failed rollback attempt', async () => {
      const t = JSON.parse((await cli('tx', 'show', xid, '--json')).stdout) as TxJson;
      return t.branches[0]?.attempts >= 1 && t.branches[0].lastError ? t : undefined;
    }))!;
    assert.equal(shown.state, 'ABORTING');
    assert.equal(shown.branches[0].service, 'inventory');
    assert.ok(shown.branches[0].nextRetryAtMs > 0, 'a retry is scheduled');

    const human = await cli('tx', 'show', xid);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, new RegExp(`^xid: +${xid}$`, 'm'));
    assert.match(human.stdout, /^state: +ABORTING$/m);
    assert.match(human.stdout, /^abort reason: +participant gone$/m);
    // Its deadline (60 s ahead) no longer acts on it: said so, and left out of the list.
    assert.match(human.stdout, /^deadline: +\S+Z \(in \S+; applies only while ACTIVE\)$/m);
    const listed = plainLines((await cli('tx', 'list', '--state', 'aborting')).stdout);
    assert.match(listed[1], new RegExp(`^${xid} +ABORTING +\\S+ +1 +- +order +\\S`));
    assert.match(
      human.stdout,
      /^BRANCH +SERVICE +INSTANCE +ADDRESS +STATE +VOTE +ATTEMPTS +NEXT RETRY +LAST ERROR$/m,
    );
    assert.match(
      human.stdout,
      /^inv-1 +inventory +inv-a +127\.0\.0\.1:1 +\S+ +- +\d+ +(in \S+|\S+ ago) +\S/m,
    );

    for (const outcome of ['--commit', '--abort']) {
      const again = await cli('tx', 'resolve', xid, outcome);
      assert.equal(again.code, 1);
      assert.deepEqual(plainLines(again.stderr), [
        `dmtp tx resolve: refused: transaction ${xid} already has a decision (ABORTING)`,
      ]);
    }
  });

  it('resolve --commit is refused while a branch is not prepared; an unknown xid is a clear error', async () => {
    const xid = await begin();
    const commit = await cli('tx', 'resolve', xid, '--commit');
    assert.equal(commit.code, 1);
    assert.match(
      plainLines(commit.stderr).join('\n'),
      /^dmtp tx resolve: refused: .*COMMIT is only for a PREPARING transaction with every branch prepared; it is ACTIVE: nothing was prepared/,
    );

    const unknown = `${id}:${Date.now().toString(36)}:zzz`;
    for (const args of [
      ['resolve', unknown, '--abort'],
      ['show', unknown],
    ]) {
      const r = await cli('tx', ...args);
      assert.equal(r.code, 1);
      assert.deepEqual(plainLines(r.stderr), [
        `dmtp tx ${args[0]}: transaction ${unknown} is not known to coordinator ${id}`,
      ]);
    }
  });

  it('settle: a committed branch whose participant is gone for good stops being retried, durably; the rest finishes', async () => {
    // 'a' acknowledges; every phase-2 Commit to 'b' and 'c' fails (their participant gone, as far as the
    // coordinator can tell).
    const ok = await new TestParticipant({ name: 'settle-ok' }).start();
    const gone = await new TestParticipant({
      name: 'settle-gone',
      switches: { failCommitTimes: 1e9 },
    }).start();
    try {
      const { xid } = await client.begin({ timeoutMs: 60_000, initiator: 'order' });
      const committed = await client.commit({
        xid,
        branches: [ok.branch('a'), gone.branch('b'), gone.branch('c')],
      });
      assert.equal(committed.state, TxState.TX_STATE_COMMITTED);
      await waitFor('failed phase-2 attempts at b and c', async () => {
        const t = JSON.parse((await cli('tx', 'show', xid, '--json')).stdout) as TxJson;
        return t.branches.filter((b) => b.lastError).length === 2 ? t : undefined;
      });

      const settled = await cli('tx', 'settle', xid, 'b', '--reason', 'COMMIT PREPARED by hand');
      assert.equal(settled.code, 0, settled.stderr);
      assert.equal(settled.stdout, `${xid}: branch b settled (COMMITTED); COMMITTING\n`);
      // In etcd before the answer: the record no longer names 'b', so no coordinator sends to it again.
      const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
      const stored = await etcd.get(`${prefix}/tx/${id}/${xid}`).buffer();
      etcd.close();
      assert.deepEqual(
        decodeRecord(stored!).branches.map((b) => b.branchId),
        ['c'],
      );
      const shown = JSON.parse((await cli('tx', 'show', xid, '--json')).stdout) as TxJson & {
        branches: { reason: string }[];
      };
      assert.deepEqual(
        shown.branches.map((b) => [b.branchId, b.state, b.settled]),
        [
          ['a', 'COMMITTED', false],
          ['b', 'COMMITTED', true],
          ['c', 'PREPARED', false],
        ],
      );
      // The table says that 'b' was settled, and why.
      const table = plainLines((await cli('tx', 'show', xid)).stdout);
      assert.match(
        table.find((l) => /^b\s/.test(l)) ?? '',
        /\sCOMMITTED \(settled\)\s.*\ssettled by an operator: COMMIT PREPARED by hand$/,
      );

      // Restarted, the coordinator re-drives 'c' only.
      client.close();
      await coord.stop();
      const sentBefore = gone.calls.filter((c) => c.xid === xid && c.branchId === 'b').length;
      await startCoordinator();
      const atRestart = gone.calls.filter((c) => c.xid === xid && c.branchId === 'c').length;
      await waitFor('c told again after the restart', async () =>
        gone.calls.filter((c) => c.xid === xid && c.branchId === 'c').length > atRestart ? true : undefined,
      );
      assert.equal(gone.calls.filter((c) => c.xid === xid && c.branchId === 'b').length, sentBefore);

      const last = await cli('tx', 'settle', xid, 'c', '--json');
      assert.equal(last.code, 0, last.stderr);
      assert.deepEqual(JSON.parse(last.stdout), {
        xid,
        branch: 'c',
        settled: true,
        branchState: 'COMMITTED',
        state: 'COMMITTED',
      });
      await waitFor('the transaction finished', async () =>
        (await client.get({ xid })).transaction?.branches.length === 0 ? true : undefined,
      );
      assert.equal((await client.get({ xid })).transaction?.state, TxState.TX_STATE_COMMITTED);

      const again = await cli('tx', 'settle', xid, 'c');
      assert.equal(again.code, 1);
      assert.deepEqual(plainLines(again.stderr), [
        `dmtp tx settle: refused: transaction ${xid} is already finished: nothing to settle`,
      ]);
    } finally {
      await Promise.all([ok.stop(), gone.stop()]);
    }
  });

  it('settle is refused before a decision and for a branch the transaction does not have', async () => {
    const xid = await begin();
    const early = await cli('tx', 'settle', xid, 'inv-1');
    assert.equal(early.code, 1);
    assert.deepEqual(plainLines(early.stderr), [
      `dmtp tx settle: refused: transaction ${xid} is ACTIVE: only a branch of a COMMITTING or ABORTING ` +
        'transaction can be settled; it has no decision yet (tx resolve decides one)',
    ]);
    assert.equal((await cli('tx', 'resolve', xid, '--abort')).code, 0);
    const unknown = await cli('tx', 'settle', xid, 'inv-9');
    assert.equal(unknown.code, 1);
    assert.deepEqual(plainLines(unknown.stderr), [
      `dmtp tx settle: transaction ${xid} has no branch 'inv-9'`,
    ]);
    const missing = await cli('tx', 'settle', xid);
    assert.equal(missing.code, 1);
    assert.deepEqual(plainLines(missing.stderr), [
      "dmtp tx settle: missing <branch> (see 'dmtp tx settle --help')",
    ]);
  });

  it('finds the coordinator in the registry when no address is given', async () => {
    const xid = await begin();
    const registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    try {
      await registry.register({ service: 'dmtp-coordinator', instanceId: id, address });
      const listed = await runCli(['tx', 'list', '--prefix', prefix, '--json']);
      assert.equal(listed.code, 0, listed.stderr);
      assert.deepEqual(
        (JSON.parse(listed.stdout) as TxJson[]).map((t) => t.xid),
        [xid],
      );
      const shown = await runCli(['tx', 'show', xid, '--prefix', prefix, '--json']);
      assert.equal((JSON.parse(shown.stdout) as TxJson).state, 'ACTIVE');
    } finally {
      await registry.close();
    }
    const none = await runCli(['tx', 'list', '--prefix', prefix]);
    assert.equal(none.code, 1);
    assert.match(
      plainLines(none.stderr)[0],
      /^dmtp tx list: no coordinator registered as 'dmtp-coordinator' under /,
    );
  });

  it('tx list lists what the coordinators that answer hold, names each one that does not, and exits 1', async () => {
    const xid = await begin();
    const registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    try {
      // A coordinator killed a moment ago stays registered until its lease ends: port 1 refuses.
      await registry.register({ service: 'dmtp-coordinator', instanceId: id, address });
      await registry.register({ service: 'dmtp-coordinator', instanceId: 'gone', address: '127.0.0.1:1' });
      for (const json of [true, false]) {
        const r = await runCli([
          'tx',
          'list',
          '--prefix',
          prefix,
          '--timeout',
          '2s',
          ...(json ? ['--json'] : []),
        ]);
        assert.equal(r.code, 1, 'the list is partial');
        assert.deepEqual(plainLines(r.stderr), [
          'dmtp tx list: cannot reach the coordinator at 127.0.0.1:1 (connect ECONNREFUSED 127.0.0.1:1); ' +
            'its transactions are not listed',
        ]);
        if (json)
          assert.deepEqual(
            (JSON.parse(r.stdout) as TxJson[]).map((t) => t.xid),
            [xid],
          );
        else assert.match(plainLines(r.stdout)[1], new RegExp(`^${xid} +ACTIVE `));
      }
    } finally {
      await registry.close();
    }
  });

  it('tx list with no coordinator answering names every one of them, in one line', async () => {
    const registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    try {
      await registry.register({ service: 'dmtp-coordinator', instanceId: 'gone-1', address: '127.0.0.1:1' });
      await registry.register({ service: 'dmtp-coordinator', instanceId: 'gone-2', address: '127.0.0.1:2' });
      const r = await runCli(['tx', 'list', '--prefix', prefix, '--timeout', '2s']);
      assert.equal(r.code, 1);
      assert.equal(r.stdout, '');
      const lines = plainLines(r.stderr);
      assert.equal(lines.length, 1, r.stderr);
      assert.match(
        lines[0],
        /^dmtp tx list: no coordinator answered: cannot reach the coordinator at 127\.0\.0\.1:[12] /,
      );
      for (const port of [1, 2]) assert.ok(lines[0].includes(`coordinator at 127.0.0.1:${port} (`), lines[0]);
    } finally {
      await registry.close();
    }
  });

  it('tx list --limit takes at most that many per coordinator; 0 is refused', async () => {
    const xids = [await begin('inv-1'), await begin('inv-2'), await begin('inv-3')];
    const two = await cli('tx', 'list', '--json', '--limit', '2');
    assert.equal(two.code, 0, two.stderr);
    const listed = (JSON.parse(two.stdout) as TxJson[]).map((t) => t.xid);
    assert.equal(listed.length, 2, `two of the three: ${listed.join(' ')}`);
    assert.ok(listed.every((x) => xids.includes(x)) && new Set(listed).size === 2);
    const zero = await cli('tx', 'list', '--limit', '0');
    assert.equal(zero.code, 1);
    assert.equal(zero.stdout, '');
    assert.match(plainLines(zero.stderr)[0], /^dmtp tx list: --limit must be at least 1, not 0 \(see/);
  });

  it('show, resolve and settle follow the HA owner route to the coordinator answering for a dead owner', async () => {
    const xid = await begin();
    const registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    try {
      // Two coordinators registered, neither under the owner's id: only the owner route can tell.
      await registry.register({ service: 'dmtp-coordinator', instanceId: 'taker', address });
      await registry.register({ service: 'dmtp-coordinator', instanceId: 'other', address: '127.0.0.1:1' });
      // The coordinator's HA member keeps its own owner route (a taker would keep the dead owner's).
      await waitFor('the owner route', async () =>
        (await registry.instances('dmtp-coordinator-owner')).some(
          (r) => r.instanceId === id && r.address === address,
        ),
      );
      const shown = await runCli(['tx', 'show', xid, '--prefix', prefix, '--json']);
      assert.equal(shown.code, 0, shown.stderr);
      assert.equal((JSON.parse(shown.stdout) as TxJson).state, 'ACTIVE');
      const resolved = await runCli(['tx', 'resolve', xid, '--abort', '--prefix', prefix]);
      assert.equal(resolved.code, 0, resolved.stderr);
      assert.equal(plainLines(resolved.stdout)[0], `${xid}: ABORTED`);
      // Its branch's rollback cannot reach port 1: settled by hand, the transaction ends.
      const settled = await runCli(['tx', 'settle', xid, 'inv-1', '--prefix', prefix]);
      assert.equal(settled.code, 0, settled.stderr);
      assert.equal(plainLines(settled.stdout)[0], `${xid}: branch inv-1 settled (ROLLED_BACK); ABORTED`);
    } finally {
      await registry.close();
    }
  });

  it('an unreachable coordinator is one line on stderr and exit code 1, within seconds', async () => {
    const r = await runCli(['tx', 'list', '--coordinator', '127.0.0.1:1', '--timeout', '2s']);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.deepEqual(plainLines(r.stderr), [
      'dmtp tx list: cannot reach the coordinator at 127.0.0.1:1 (connect ECONNREFUSED 127.0.0.1:1)',
    ]);
    assert.ok(r.ms < 5_000, `took ${r.ms} ms`);
  });
});

describe('dmtp tx with TLS (DMTP_TLS_*)', function () {
  this.timeout(30_000);
  const pki = testPki();
  const env = tlsEnv();
  let coord: Coordinator;
  let prefix: string;

  beforeEach(async function () {
    prefix = `/dmtp-test/${nameFor(this)}`;
    coord = new Coordinator({
      id: 'cli-tls',
      etcd: { endpoints: ETCD_ENDPOINTS, prefix },
      tls: { ca: pki.ca, cert: pki.cert, key: pki.key, requireClientCert: true },
    });
    await coord.start();
  });
  afterEach(async () => {
    await coord.stop();
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    await etcd.delete().prefix(prefix);
    etcd.close();
  });

  it('tx list reaches a mutual-TLS coordinator with the certificates DMTP_TLS_* names, and not without', async () => {
    const ok = await runCli(['tx', 'list', '--coordinator', coord.address, '--json'], env);
    assert.equal(ok.code, 0, ok.stderr);
    assert.deepEqual(JSON.parse(ok.stdout), []);

    const plain = await runCli(['tx', 'list', '--coordinator', coord.address, '--timeout', '2s']);
    assert.equal(plain.code, 1);
    assert.match(plainLines(plain.stderr).join('\n'), /^dmtp tx list: cannot reach the coordinator at /);

    const unreadable = await runCli(['tx', 'list', '--coordinator', coord.address], {
      ...env,
      DMTP_TLS_KEY: '/nonexistent/key.pem',
    });
    assert.equal(unreadable.code, 1);
    assert.deepEqual(plainLines(unreadable.stderr), [
      "dmtp tx list: tls.key: cannot read /nonexistent/key.pem: ENOENT: no such file or directory, open '/nonexistent/key.pem' (from DMTP_TLS_*)",
    ]);
  });
});
