/**
 * `dmtp branch list` against real PostgreSQL prepared transactions (PREPARE TRANSACTION under pgResource-shaped
 * gids, by hand) and a real coordinator on the etcd log: the branches are listed oldest first with their
 * coordinator's answer, other gids are not, and a database or coordinator that does not answer is said plainly
 * (a database gone silent: the real one behind a proxy that stops passing the client's bytes on after the
 * handshake, as a network that drops packets does). With `--service`, instances sharing a PgBranchStore table
 * list each branch once.
 */
import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import { Etcd3 } from 'etcd3';
import { Client, Pool } from 'pg';
import { mintXid } from '../../../common';
import { Coordinator } from '../../../coordinator';
import { EtcdRegistry } from '../../../registry';
import { startServer, type RpcServer } from '../../../rpc/server';
import { defineResource, Participant, participantBinding, PgBranchStore } from '../../../txapi';
import { DATABASE_URL, ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { putCommitting } from './committing-record';
import { plainLines, runCli } from './run-cli';

const TABLE = 'dmtp_cli_branch_list';

describe('dmtp branch list (real PostgreSQL prepared transactions, a real coordinator)', function () {
  this.timeout(30_000);
  let prefix: string;
  /** A gid prefix of this test's own: the cluster's other prepared transactions stay out of its list. */
  let gidPrefix: string;
  let gids: string[];

  before(async () => {
    const c = new Client({ connectionString: DATABASE_URL });
    await c.connect();
    await c.query(`CREATE TABLE IF NOT EXISTS ${TABLE} (gid text)`);
    await c.end();
  });

  beforeEach(function () {
    prefix = `/dmtp-test/${nameFor(this)}`;
    gidPrefix = `t${Math.random().toString(36).slice(2, 8)}_`;
    gids = [];
  });

  afterEach(async () => {
    const c = new Client({ connectionString: DATABASE_URL });
    await c.connect();
    const left = await c.query<{ gid: string }>('SELECT gid FROM pg_prepared_xacts WHERE gid = ANY($1)', [
      gids,
    ]);
    for (const { gid } of left.rows) await c.query(`ROLLBACK PREPARED '${gid}'`);
    await c.end();
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    await etcd.delete().prefix(prefix);
    etcd.close();
  });

  /** A PostgreSQL transaction that wrote a row and was prepared under `gid`, as pgResource prepares a branch. */
  async function prepareAs(gid: string): Promise<void> {
    const c = new Client({ connectionString: DATABASE_URL });
    await c.connect();
    try {
      await c.query('BEGIN');
      await c.query(`INSERT INTO ${TABLE} VALUES ($1)`, [gid]);
      await c.query(`PREPARE TRANSACTION '${gid}'`);
      gids.push(gid);
    } finally {
      await c.end();
    }
  }

  const cli = (...args: string[]) =>
    runCli(['branch', 'list', '--prefix', prefix, '--timeout', '2s', '--gid-prefix', gidPrefix, ...args]);

  it("lists pgResource branches oldest first with their coordinator's answer, and no other gid", async () => {
    // A commit its coordinator decided (recovered from its log) and an xid of that coordinator it never heard of.
    const committed = mintXid('cli-list', Date.now());
    await putCommitting(prefix, committed);
    const empty = await cli('--database', DATABASE_URL, '--no-outcome');
    assert.equal(empty.code, 0, empty.stderr);
    assert.match(
      empty.stdout,
      new RegExp(`^no prepared branch \\(gid prefix '${gidPrefix}'\\) in the cluster of PostgreSQL at `),
    );
    const forgotten = mintXid('cli-list', Date.now());
    await prepareAs(`${gidPrefix}${committed}|db@shop-1`);
    await prepareAs(`${gidPrefix}${forgotten}|db@shop-2`);
    await prepareAs(`x${gidPrefix}${forgotten}|db@shop-3`); // another prefix: not this resource's
    await prepareAs(`${gidPrefix}no-branch-separator`); // the prefix, but not a branch's gid

    const coord = new Coordinator({ id: 'cli-list', etcd: { endpoints: ETCD_ENDPOINTS, prefix } });
    const address = await coord.start();
    try {
      const json = await cli('--database', DATABASE_URL, '--coordinator', address, '--json');
      assert.equal(json.code, 0, json.stderr);
      const rows = JSON.parse(json.stdout) as Record<string, unknown>[];
      const database = new URL(DATABASE_URL).pathname.slice(1);
      assert.deepEqual(
        rows.map(({ preparedAgoMs, ...rest }) => {
          assert.ok(typeof preparedAgoMs === 'number' && preparedAgoMs >= 0, `${preparedAgoMs}`);
          return rest;
        }),
        [
          {
            xid: committed,
            branch: 'db@shop-1',
            gid: `${gidPrefix}${committed}|db@shop-1`,
            database,
            outcome: 'COMMIT',
          },
          {
            xid: forgotten,
            branch: 'db@shop-2',
            gid: `${gidPrefix}${forgotten}|db@shop-2`,
            database,
            outcome: 'ABORT', // presumed abort
          },
        ],
      );

      const table = await cli('--database', DATABASE_URL, '--coordinator', address);
      assert.equal(table.code, 0, table.stderr);
      const lines = plainLines(table.stdout);
      assert.match(lines[0], /^XID +BRANCH +DATABASE +PREPARED +OUTCOME$/);
      assert.match(lines[1], new RegExp(`^${committed} +db@shop-1 +${database} +\\S+ ago +COMMIT$`));
      assert.match(lines[2], new RegExp(`^${forgotten} +db@shop-2 +${database} +\\S+ ago +ABORT$`));
      assert.equal(lines.length, 3);
    } finally {
      await coord.stop();
    }
  });

  it('reads only the database with --no-outcome; a coordinator or a database that does not answer is said plainly', async () => {
    const xid = mintXid('cli-list-gone', Date.now());
    await prepareAs(`${gidPrefix}${xid}|db@shop-1`);
    await prepareAs(`${gidPrefix}not-an-xid|db@shop-4`); // the shape of a branch's gid, but no xid in it

    const offline = await cli('--database', DATABASE_URL, '--no-outcome', '--json');
    assert.equal(offline.code, 0, offline.stderr);
    const [row] = JSON.parse(offline.stdout) as Record<string, unknown>[]; // and the malformed one after it
    assert.equal(row.xid, xid);
    assert.equal('outcome' in row, false);

    // Its coordinator does not answer: the list still comes, each row saying why it has no outcome.
    const unasked = await cli('--database', DATABASE_URL, '--coordinator', '127.0.0.1:1', '--json');
    assert.equal(unasked.code, 0, unasked.stderr);
    const [gone, malformed] = JSON.parse(unasked.stdout) as Record<string, unknown>[];
    assert.match(String(gone.outcome), /^no answer: .*127\.0\.0\.1:1/);
    assert.equal(malformed.xid, 'not-an-xid');
    assert.equal(malformed.outcome, "no answer: malformed xid 'not-an-xid'");

    const down = await cli('--database', 'postgres://postgres:s3cret@127.0.0.1:1/shop', '--no-outcome');
    assert.equal(down.code, 1);
    const said = plainLines(down.stderr);
    assert.equal(said.length, 1, down.stderr);
    assert.match(
      said[0],
      /^dmtp branch list: PostgreSQL at 127\.0\.0\.1:1\/shop did not list its prepared transactions: /,
    );
    assert.ok(!down.stderr.includes('s3cret'), 'the password is never printed');
  });

  it('gives up on a database that connects and then answers nothing, within --timeout', async () => {
    const target = new URL(DATABASE_URL);
    // Passes the handshake both ways; once PostgreSQL said ReadyForQuery, the client's bytes go nowhere.
    const READY = Buffer.from([0x5a, 0, 0, 0, 5, 0x49]); // 'Z', length 5, idle
    const sockets = new Set<net.Socket>();
    const proxy = net.createServer((client) => {
      const server = net.connect(Number(target.port || 5432), target.hostname);
      let passClient = true;
      for (const s of [client, server]) {
        sockets.add(s);
        s.on('error', () => undefined);
      }
      client.on('data', (d) => passClient && server.write(d));
      server.on('data', (d) => {
        client.write(d);
        if (d.subarray(-READY.length).equals(READY)) passClient = false;
      });
      client.on('close', () => server.destroy());
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = proxy.address() as net.AddressInfo;
      const silent = new URL(DATABASE_URL);
      silent.port = String(port);
      const r = await runCli([
        'branch',
        'list',
        '--database',
        silent.toString(),
        '--no-outcome',
        '--timeout',
        '1s',
      ]);
      assert.equal(r.code, 1, `exit ${r.code}: ${r.stderr}`);
      assert.deepEqual(plainLines(r.stderr), [
        `dmtp branch list: PostgreSQL at 127.0.0.1:${port}${silent.pathname} did not list its prepared ` +
          'transactions: no answer within 1s',
      ]);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => proxy.close(resolve));
    }
  });

  it('with --service, lists a branch held in a PgBranchStore table shared by two instances once', async () => {
    const table = `dmtp_cli_shared_${Math.random().toString(36).slice(2, 8)}`;
    const pool = new Pool({ connectionString: DATABASE_URL, max: 4 });
    const registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    const running: { participant: Participant; server: RpcServer }[] = [];
    try {
      for (const instanceId of ['shop-1', 'shop-2']) {
        const participant = new Participant({
          service: 'shop',
          instanceId,
          address: '127.0.0.1:0',
          store: new PgBranchStore({ pool, table }),
          resources: [
            defineResource<undefined>({
              name: 'db',
              prepare: async () => ({ vote: 'prepared' }),
              commit: async () => undefined,
              rollback: async () => undefined,
            }),
          ],
          recoveryIntervalMs: 3_600_000,
        });
        await participant.start();
        const server = await startServer({ services: [participantBinding(participant)], drainDelayMs: 0 });
        running.push({ participant, server });
        await registry.register({ service: 'shop', instanceId, address: server.address });
      }
      const xids: string[] = [];
      for (const { participant } of running) {
        const xid = mintXid('gone-coord', Date.now());
        const key = { xid, branchId: participant.branchIdFor('db') };
        await participant.withBranch(
          { xid, coordinatorAddress: '127.0.0.1:1', deadlineAtMs: Date.now() + 60_000 },
          'db',
          async () => 1,
        );
        assert.equal((await participant.prepare(key, 'db')).vote, 'prepared');
        xids.push(xid);
      }
      const r = await cli('--service', 'shop', '--no-outcome', '--json');
      assert.equal(r.code, 0, r.stderr);
      const rows = JSON.parse(r.stdout) as { xid: string; branch: string }[];
      assert.deepEqual(
        rows.map((row) => [row.xid, row.branch]),
        [
          [xids[0], 'db@shop-1'],
          [xids[1], 'db@shop-2'],
        ],
      );
    } finally {
      for (const { participant, server } of running) {
        await server.stop();
        await participant.stop();
      }
      await registry.close();
      await pool.query(`DROP TABLE IF EXISTS ${table}`).catch(() => undefined);
      await pool.end();
    }
  });
});
