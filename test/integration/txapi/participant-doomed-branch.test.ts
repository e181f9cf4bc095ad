// A business call that fails after reserving in a legacy system, on a reservation branch whose cancel then fails
// (a timeout): the branch is doomed. The initiator catches the call's error — its handler's own — and commits;
// the transaction must not commit that branch: it aborts, and the legacy systems end with every reservation
// cancelled and none confirmed, in a two-phase transaction (two services) and a one-phase one (one branch), and
// across a restart of the participant that held the doomed branch. Before, the failed call answered the cancel's
// UNAVAILABLE, the branch stayed live, and the commit confirmed the failed call's reservation with the rest.
// Real coordinator (etcd log), real gRPC through rpc's client, branch records in PostgreSQL.
import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { Pool } from 'pg';
import { status } from '@grpc/grpc-js';
import { FailedPreconditionError } from '../../../common';
import { Coordinator } from '../../../coordinator';
import { ParticipantService } from '../../../proto';
import { EtcdRegistry } from '../../../registry';
import { client, startServer, type RpcServer } from '../../../rpc';
import {
  createDmtp,
  Participant,
  participantHandlers,
  PgBranchStore,
  recordReservation,
  reservationResource,
  TransactionAbortedError,
  txClientMiddleware,
  txServerMiddleware,
  type Dmtp,
} from '../../../txapi';
import { waitFor } from '../../support/coordinator-wait';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { freePort } from '../../support/txapi-bank';
import { createTestDb, type TestDb } from '../../support/txapi-pg';

interface ReserveRequest {
  item: string;
  /** The handler fails after reserving (and recording) the item. */
  fail?: boolean;
}

const json = (path: string) => ({
  path,
  requestStream: false as const,
  responseStream: false as const,
  requestSerialize: (v: unknown) => Buffer.from(JSON.stringify(v)),
  requestDeserialize: (b: Buffer) => JSON.parse(b.toString('utf8')) as ReserveRequest,
  responseSerialize: (v: unknown) => Buffer.from(JSON.stringify(v)),
  responseDeserialize: (b: Buffer) => JSON.parse(b.toString('utf8')) as { ok: boolean },
});
const LEGACY_DEFINITION = { reserve: json('/test.Legacy/Reserve') };

/** A legacy system that can reserve, confirm and cancel items; its cancel times out `cancelFailures` times. */
class Legacy {
  readonly state = new Map<string, 'held' | 'confirmed' | 'cancelled'>();
  cancelFailures = 0;
  confirm(items: string[]): void {
    for (const i of items) this.state.set(i, 'confirmed');
  }
  cancel(items: string[]): void {
    if (this.cancelFailures > 0) {
      this.cancelFailures--;
      throw new Error('legacy system timed out');
    }
    for (const i of items) if (this.state.get(i) !== 'confirmed') this.state.set(i, 'cancelled');
  }
  of(prefix: string): Record<string, string> {
    return Object.fromEntries([...this.state].filter(([k]) => k.startsWith(prefix)).sort());
  }
}

/** A reservation participant service, restartable on its port with the same branch table. */
class LegacyService {
  readonly legacy = new Legacy();
  participant!: Participant;
  private server: RpcServer | undefined;
  private readonly storePool: Pool;

  constructor(
    readonly name: string,
    readonly port: number,
    private readonly db: TestDb,
    private readonly registry: EtcdRegistry,
  ) {
    this.storePool = new Pool({ connectionString: db.url, max: 4 });
  }

  async start(): Promise<void> {
    const legacy = this.legacy;
    this.participant = new Participant({
      service: this.name,
      instanceId: `${this.name}-1`,
      address: `127.0.0.1:${this.port}`,
      store: new PgBranchStore({ pool: this.storePool, table: `${this.name}_branches` }),
      resources: [
        reservationResource({
          name: 'items',
          confirm: async (b) => legacy.confirm(Object.keys(b.data)),
          cancel: async (b) => legacy.cancel(Object.keys(b.data)),
        }),
      ],
      deadlineGraceMs: 100,
      recoveryIntervalMs: 3_600_000, // the rollbacks retried here come from the coordinator and the deadline
    });
    await this.participant.start();
    this.server = await startServer({
      port: this.port,
      registry: this.registry,
      instance: { instanceId: `${this.name}-1` },
      drainDelayMs: 0,
      middleware: [txServerMiddleware(this.participant)],
      services: [
        { name: this.name, definition: ParticipantService, handlers: participantHandlers(this.participant) },
        {
          name: this.name,
          definition: LEGACY_DEFINITION,
          handlers: {
            reserve: async ({ request }: { request: ReserveRequest }) => {
              await recordReservation({ [request.item]: '1' }); // recorded before reserving
              legacy.state.set(request.item, 'held');
              if (request.fail) {
                throw new FailedPreconditionError(`${request.item} refused after reserving it`);
              }
              return { ok: true };
            },
          },
        },
      ],
    });
  }

  async stop(): Promise<void> {
    await this.server?.stop();
    await this.participant.stop();
  }

  /** The branch's row as PostgreSQL has it (what a kill -9 would leave). */
  async row(xid: string): Promise<{ status: string; data: Record<string, string> } | undefined> {
    const r = await this.storePool.query<{ status: string; data: Record<string, string> }>(
      `SELECT status, data FROM ${this.name}_branches WHERE xid = $1`,
      [xid],
    );
    return r.rows[0];
  }

  async close(): Promise<void> {
    await this.storePool.end();
    await this.db.drop();
  }
}

describe('txapi participant: a failed call whose rollback fails dooms its branch', function () {
  this.timeout(60_000);
  let prefix: string;
  let registry: EtcdRegistry;
  let coordinator: Coordinator;
  let dmtp: Dmtp;
  let seats: LegacyService;
  let rooms: LegacyService;
  let seatsClient: ReturnType<typeof client<typeof LEGACY_DEFINITION>>;
  let roomsClient: ReturnType<typeof client<typeof LEGACY_DEFINITION>>;

  before(async function () {
    const name = nameFor(this, 30);
    prefix = `/t/${name}`;
    registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    coordinator = new Coordinator({
      id: name.replace(/[^A-Za-z0-9._-]/g, '-'),
      etcd: { endpoints: ETCD_ENDPOINTS, prefix },
    });
    const address = await coordinator.start();
    dmtp = createDmtp({ coordinator: { id: coordinator.id, address }, commitTimeoutMs: 8_000 });
    seats = new LegacyService('seats', await freePort(), await createTestDb(this, '_s'), registry);
    rooms = new LegacyService('rooms', await freePort(), await createTestDb(this, '_r'), registry);
    await seats.start();
    await rooms.start();
    const options = { middleware: [txClientMiddleware], timeoutMs: 3_000 };
    seatsClient = client(registry, 'seats', LEGACY_DEFINITION, options);
    roomsClient = client(registry, 'rooms', LEGACY_DEFINITION, options);
    await seatsClient.ready();
    await roomsClient.ready();
  });

  after(async () => {
    await seatsClient?.close();
    await roomsClient?.close();
    dmtp?.close();
    for (const s of [seats, rooms]) {
      await s?.stop();
      await s?.close();
    }
    await coordinator?.stop();
    await registry?.close();
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    await etcd.delete().prefix(prefix);
    etcd.close();
  });

  /** What the caller sees of a call: its gRPC code and message. */
  const outcomeOf = (p: Promise<unknown>) =>
    p.then(
      () => ({ code: status.OK, message: '' }),
      (err: { code?: number; message: string }) => ({ code: err.code, message: err.message }),
    );

  it('two-phase: the caller gets its own error, the branch votes ABORT, and the coordinator cancels it all', async () => {
    seats.legacy.cancelFailures = 2; // the failed call's rollback, then the one at Prepare; the Rollback works
    let xid = '';
    const calls: Record<string, { code?: number; message: string }> = {};
    const done = await outcomeOf(
      dmtp.transaction(
        async (tx) => {
          xid = tx.xid;
          await roomsClient.reserve({ item: 'r1' });
          await seatsClient.reserve({ item: 's1' });
          calls.failed = await outcomeOf(seatsClient.reserve({ item: 's2', fail: true }));
          calls.later = await outcomeOf(seatsClient.reserve({ item: 's3' }));
          // The initiator goes on: an error the participant answered itself does not make it rollback-only.
        },
        { timeoutMs: 5_000 },
      ),
    );
    assert.equal(done.code, status.ABORTED, `the transaction must abort, not commit: ${done.message}`);
    await waitFor(
      'every reservation cancelled',
      () => seats.legacy.of('s').s2 === 'cancelled' && rooms.legacy.of('r').r1 === 'cancelled',
    );
    assert.deepEqual(seats.legacy.of('s'), { s1: 'cancelled', s2: 'cancelled' }, 'nothing confirmed');
    assert.deepEqual(rooms.legacy.of('r'), { r1: 'cancelled' });
    assert.equal((await seats.row(xid))?.status, 'rolled_back');
    assert.equal(
      calls.failed.code,
      status.FAILED_PRECONDITION,
      "the failed call answers its handler's own error",
    );
    assert.match(calls.failed.message, /s2 refused after reserving it/);
    assert.equal(
      calls.later.code,
      status.FAILED_PRECONDITION,
      'a later call on the doomed branch is refused',
    );
    assert.match(calls.later.message, new RegExp(`branch items@seats-1 of ${xid} must roll back`));
    assert.match(done.message, /voted abort: a later business call failed: s2 refused/);
  });

  it('one-phase: the lone doomed branch answers not committed, and its rollback is asked again until done', async () => {
    // The failed call's rollback, the one at the one-phase Commit, then the coordinator's first Rollback.
    seats.legacy.cancelFailures = 3;
    let xid = '';
    const err = await dmtp
      .transaction(
        async (tx) => {
          xid = tx.xid;
          await seatsClient.reserve({ item: 'o1' });
          await seatsClient.reserve({ item: 'o2', fail: true }).catch(() => undefined);
        },
        { timeoutMs: 5_000 },
      )
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    assert.ok(
      err instanceof TransactionAbortedError,
      `the transaction must abort, not commit: ${String(err)}`,
    );
    assert.match(err.message, /a later business call failed: o2 refused/);
    await waitFor('the branch rolled back', async () => (await seats.row(xid))?.status === 'rolled_back');
    assert.equal(seats.legacy.cancelFailures, 0);
    assert.deepEqual(seats.legacy.of('o'), { o1: 'cancelled', o2: 'cancelled' }, 'nothing confirmed');
  });

  it('a failed first call: a later call to its branch is refused, and the deadline cancels the branch', async () => {
    seats.legacy.cancelFailures = 1;
    let xid = '';
    let later = { code: undefined as number | undefined, message: '' };
    const tx = await dmtp.transaction(
      async (t) => {
        xid = t.xid;
        await seatsClient.reserve({ item: 'f1', fail: true }).catch(() => undefined);
        later = await outcomeOf(seatsClient.reserve({ item: 'f2' }));
        return t;
      },
      { timeoutMs: 1_000 },
    );
    // Neither call reached the initiator as done: it commits nothing, and the doomed branch is not in it.
    assert.deepEqual(tx.branches, []);
    assert.equal(later.code, status.FAILED_PRECONDITION);
    assert.match(later.message, new RegExp(`branch items@seats-1 of ${xid} must roll back`));
    assert.deepEqual(seats.legacy.of('f'), { f1: 'held' }, 'f2 never reserved; f1 waits for its rollback');
    await waitFor(
      'the deadline to roll the branch back',
      async () => (await seats.row(xid))?.status === 'rolled_back',
    );
    assert.deepEqual(seats.legacy.of('f'), { f1: 'cancelled' });
  });

  it('across a restart: the doomed branch is recorded as registered, rolled back at start, never committed', async () => {
    seats.legacy.cancelFailures = 2; // the failed call's rollback, then the one at stop
    let xid = '';
    const err = await dmtp
      .transaction(
        async (tx) => {
          xid = tx.xid;
          await seatsClient.reserve({ item: 'k1' });
          await seatsClient.reserve({ item: 'k2', fail: true }).catch(() => undefined);
          // What a kill -9 right now leaves: the record, with both reservations, as not prepared.
          assert.deepEqual(await seats.row(xid), { status: 'registered', data: { k1: '1', k2: '1' } });
          await seats.stop();
          assert.equal((await seats.row(xid))?.status, 'registered', 'its rollback at stop failed too');
          await seats.start(); // same instance id and table: the branch's work is gone, so it is rolled back
          assert.equal((await seats.row(xid))?.status, 'rolled_back');
        },
        { timeoutMs: 5_000 },
      )
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    assert.ok(
      err instanceof TransactionAbortedError,
      `the transaction must abort, not commit: ${String(err)}`,
    );
    assert.deepEqual(seats.legacy.of('k'), { k1: 'cancelled', k2: 'cancelled' });
  });
});
