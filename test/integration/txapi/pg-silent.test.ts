// pgResource when PostgreSQL goes silent — frozen, or behind a network that drops packets — made with a TCP relay
// that stops forwarding without closing anything (TCP itself would hold such a call ~15 minutes). The statements
// the resource runs itself fail within its queryTimeoutMs, naming the branch, and leave nothing half-done: the
// prepare votes ABORT with nothing prepared, a COMMIT PREPARED not answered is done on a new connection when asked
// again.
import { strict as assert } from 'node:assert';
import { Pool } from 'pg';
import { mintXid, UnavailableError } from '../../../common';
import { pgResource, type BranchRecord } from '../../../txapi';
import { gidFor } from '../../../txapi/resources/pg';
import { muteServer, tcpRelay, type TcpRelay } from '../../support/tcp-relay';
import { createTestDb, preparedGids, type TestDb } from '../../support/txapi-pg';

describe('txapi pgResource, PostgreSQL gone silent', function () {
  let db: TestDb;
  let direct: Pool;
  let relay: TcpRelay;
  let relayed: Pool;

  before(async function () {
    db = await createTestDb(this);
    direct = new Pool({ connectionString: db.url, max: 2 });
    await direct.query('CREATE TABLE accounts (id text PRIMARY KEY, balance int NOT NULL)');
  });
  after(async () => {
    await direct?.end();
    await db?.drop();
  });
  beforeEach(async () => {
    await direct.query(`DELETE FROM accounts; INSERT INTO accounts VALUES ('a', 100)`);
    relay = await tcpRelay(new URL(db.url).host);
    const url = new URL(db.url);
    url.host = relay.address;
    relayed = new Pool({ connectionString: url.toString(), max: 2 });
  });
  afterEach(async () => {
    await relayed.end();
    relay.close();
  });

  const branchOf = (): BranchRecord => {
    const now = Date.now();
    return {
      xid: mintXid('silent-owner'),
      branchId: 'db@i1',
      resource: 'db',
      status: 'registered',
      coordinatorAddress: '127.0.0.1:1',
      deadlineAtMs: now + 60_000,
      reason: '',
      data: {},
      createdAtMs: now,
      updatedAtMs: now,
    };
  };
  const balance = async () =>
    (await direct.query<{ b: number }>(`SELECT balance AS b FROM accounts WHERE id = 'a'`)).rows[0].b;
  const unanswered = (b: BranchRecord) =>
    `resource db: PostgreSQL did not answer within 300 ms (queryTimeoutMs) (branch ${b.branchId} of ${b.xid})`;
  const silentFor = (b: BranchRecord) => (err: UnavailableError) => {
    assert.ok(err instanceof UnavailableError, String(err));
    assert.equal(err.message, unanswered(b));
    assert.deepEqual(err.details, { resource: 'db', xid: b.xid, branchId: b.branchId });
    return true;
  };

  it('a prepare not answered votes ABORT, naming the branch; nothing is prepared or applied', async () => {
    const r = pgResource({ name: 'db', pool: relayed, phase2Pool: direct, queryTimeoutMs: 300 });
    await r.start();
    const b = branchOf();
    const c = await r.begin(b);
    await c.query(`UPDATE accounts SET balance = balance - 10 WHERE id = 'a'`);
    relay.freeze();
    assert.deepEqual(await r.prepare(b, c), { vote: 'abort', reason: unanswered(b) });
    assert.deepEqual(await preparedGids(db.url), []);
    assert.equal(await balance(), 100);
    await r.stop();
  });

  it('a COMMIT PREPARED not answered fails UNAVAILABLE; asked again, it commits on a new connection', async () => {
    const r = pgResource({ name: 'db', pool: direct, phase2Pool: relayed, queryTimeoutMs: 300 });
    await r.start(); // its role check opened the phase-2 pool's connection through the relay
    const b = branchOf();
    const c = await r.begin(b);
    await c.query(`UPDATE accounts SET balance = balance - 10 WHERE id = 'a'`);
    assert.equal((await r.prepare(b, c)).vote, 'prepared');
    relay.freeze();
    await assert.rejects(r.commit(b, undefined, false), silentFor(b));
    assert.deepEqual(
      await preparedGids(db.url),
      [gidFor('dmtp_', b)],
      'still prepared: nothing reached the server',
    );
    assert.equal(await balance(), 100);
    // The unanswered connection was closed, not given back: the next attempt opens one that gets through.
    assert.deepEqual(await r.commit(b, undefined, false), { committed: true });
    assert.equal(relay.connections, 2);
    assert.deepEqual(await preparedGids(db.url), []);
    assert.equal(await balance(), 90);
    await r.stop();
  });

  it('start() fails UNAVAILABLE when the server takes the connection and never answers', async () => {
    const mute = await muteServer();
    const url = new URL(db.url);
    url.host = mute.address;
    const r = pgResource({ name: 'db', connectionString: url.toString(), queryTimeoutMs: 300 });
    try {
      await assert.rejects(r.start(), (err: UnavailableError) => {
        assert.ok(err instanceof UnavailableError, String(err));
        assert.equal(err.message, 'resource db: no PostgreSQL connection within 300 ms (queryTimeoutMs)');
        return true;
      });
    } finally {
      mute.close();
      await r.stop();
    }
  });
});
