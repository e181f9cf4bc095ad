// A participant handler that works in its branch and then answers a response its message cannot encode — the
// README's Reserve returning { unitPriceCents } without leftInStock ("invalid int32: undefined") — inside a
// transaction, on both transports an rpc server answers by (the multiplexed stream and plain unary). The encoding
// fails inside the middleware chain, so txServerMiddleware undoes the call as it does a handler that throws: the
// branch is rolled back at once and the row it updated is free. Before, the response was encoded after the chain
// had returned: the caller got INTERNAL, the branch kept the update, and its pg transaction sat `idle in
// transaction` holding the row lock until the transaction's deadline (+ deadlineGraceMs, ~31 s by default).
import { strict as assert } from 'node:assert';
import { status as Status } from '@grpc/grpc-js';
import { Etcd3 } from 'etcd3';
import { Client, Pool } from 'pg';
import { DmtpError } from '../../../common';
import { InventoryService, type ReserveResponse } from '../../../examples/gen/shop/v1/shop';
import { ParticipantService } from '../../../proto';
import { EtcdRegistry } from '../../../registry';
import { client, startServer, UnaryTransport, type ClientOptions, type RpcServer } from '../../../rpc';
import {
  createDmtp,
  currentPg,
  Participant,
  participantHandlers,
  PgBranchStore,
  pgResource,
  txClientMiddleware,
  txServerMiddleware,
  type Dmtp,
} from '../../../txapi';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { freePort } from '../../support/txapi-bank';
import { startStubCoordinator, type StubCoordinator } from '../../support/txapi-grpc';
import { createTestDb, type TestDb } from '../../support/txapi-pg';

const STOCK = 100;

/** Updates `sku`'s row inside a second, plain pg transaction; throws when the row stays locked for `waitMs`. */
async function updateOutsideDmtp(url: string, sku: string, waitMs: number): Promise<number> {
  const c = new Client({ connectionString: url });
  await c.connect();
  const t0 = Date.now();
  try {
    await c.query('BEGIN');
    await c.query(`SET LOCAL lock_timeout = '${waitMs}ms'`);
    await c.query('UPDATE items SET stock = stock WHERE sku = $1', [sku]);
    await c.query('COMMIT');
    return Date.now() - t0;
  } finally {
    await c.end();
  }
}

for (const transport of ['mux', 'unary'] as const) {
  describe(`txapi: a participant's response that cannot be encoded (${transport})`, function () {
    this.timeout(60_000);
    let db: TestDb;
    let pool: Pool;
    let storePool: Pool;
    let prefix: string;
    let registry: EtcdRegistry;
    let coord: StubCoordinator;
    let dmtp: Dmtp;
    let participant: Participant;
    let server: RpcServer;
    let inventory: ReturnType<typeof client<typeof InventoryService>>;

    before(async function () {
      const name = nameFor(this, 30);
      prefix = `/t/${name}`;
      db = await createTestDb(this);
      pool = new Pool({ connectionString: db.url, max: 4 });
      storePool = new Pool({ connectionString: db.url, max: 2 });
      await pool.query('CREATE TABLE items (sku text PRIMARY KEY, stock integer NOT NULL)');
      await pool.query(`INSERT INTO items VALUES ('apple', ${STOCK}), ('pear', ${STOCK})`);
      registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
      coord = await startStubCoordinator();
      dmtp = createDmtp({ coordinator: { id: 'stub-coord', address: coord.address }, initiator: 'test' });
      const port = await freePort();
      participant = new Participant({
        service: 'inventory',
        instanceId: 'inventory-1',
        address: `127.0.0.1:${port}`,
        store: new PgBranchStore({ pool: storePool }),
        resources: [pgResource({ name: 'stock', pool })],
      });
      await participant.start();
      server = await startServer({
        port,
        registry,
        instance: { instanceId: 'inventory-1' },
        middleware: [txServerMiddleware(participant)],
        services: [
          { name: 'inventory', definition: ParticipantService, handlers: participantHandlers(participant) },
          {
            name: 'inventory',
            definition: InventoryService,
            handlers: {
              reserve: async ({ request }) => {
                const r = await currentPg().query<{ stock: number }>(
                  'UPDATE items SET stock = stock - $2 WHERE sku = $1 RETURNING stock',
                  [request.sku, request.quantity],
                );
                const answer = { unitPriceCents: 250, leftInStock: r.rows[0].stock };
                // An order id starting "bad" answers without leftInStock, as the README's handler did.
                return request.orderId.startsWith('bad')
                  ? ({ unitPriceCents: 250 } as ReserveResponse)
                  : answer;
              },
            },
          },
        ],
      });
      const options: ClientOptions = { middleware: [txClientMiddleware], timeoutMs: 5_000 };
      if (transport === 'unary') options.transportFactory = (i) => new UnaryTransport(i.address);
      inventory = client(registry, 'inventory', InventoryService, options);
      await inventory.ready();
      assert.equal(inventory.instances()[0]?.metadata.mux, '1', 'the server advertises the multiplexed path');
    });

    after(async () => {
      await inventory?.close();
      dmtp?.close();
      await server?.stop();
      await participant?.stop();
      await pool?.end();
      await storePool?.end();
      await coord?.stop();
      await registry?.close();
      await db?.drop();
      const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
      await etcd.delete().prefix(prefix);
      etcd.close();
    });

    const stockOf = async (sku: string) =>
      (await pool.query<{ stock: number }>('SELECT stock FROM items WHERE sku = $1', [sku])).rows[0].stock;

    it('fails the call inside the middleware chain: the branch is rolled back at once and the row is free', async () => {
      let xid = '';
      const err = await dmtp
        .transaction(
          async (tx) => {
            xid = tx.xid;
            await inventory.reserve({ orderId: 'bad-1', sku: 'apple', quantity: 2 });
          },
          { timeoutMs: 20_000 },
        )
        .then(
          () => assert.fail('the transaction committed'),
          (e: unknown) => e,
        );
      // Before, the row stayed locked by the branch's open pg transaction until the deadline (20 s + grace).
      const waitedMs = await updateOutsideDmtp(db.url, 'apple', 2_000);
      assert.ok(waitedMs < 1_000, `the row was free only after ${waitedMs} ms`);
      assert.equal(await stockOf('apple'), STOCK, 'the call that failed took nothing');
      const branch = await participant.store.get({ xid, branchId: participant.branchIdFor('stock') });
      assert.equal(branch?.status, 'rolled_back', 'the branch is rolled back, not left open');
      assert.ok(err instanceof DmtpError, String(err));
      assert.equal(err.code, Status.INTERNAL);
      assert.match(
        err.message,
        /\/shop\.v1\.Inventory\/Reserve: the handler's response cannot be encoded: invalid int32: undefined/,
      );
    });

    it('a transaction after it works on the same row at once and commits', async () => {
      await assert.rejects(
        dmtp.transaction(() => inventory.reserve({ orderId: 'bad-2', sku: 'pear', quantity: 5 })),
      );
      const res = await dmtp.transaction(
        () => inventory.reserve({ orderId: 'ok-1', sku: 'pear', quantity: 3 }),
        {
          timeoutMs: 20_000,
        },
      );
      assert.deepEqual(res, { unitPriceCents: 250, leftInStock: STOCK - 3 });
      assert.equal(await stockOf('pear'), STOCK - 3);
    });
  });
}
