/**
 * The inventory service: a DMTP participant whose work is a PostgreSQL transaction in its own database
 * (`shop_inventory`). Run two of them; both register as 'inventory' and the order service spreads its calls.
 *
 *   DATABASE_URL=postgres://…/shop_inventory INSTANCE_ID=inventory-1 PORT=7101 npx tsx examples/inventory.ts
 *
 * Reserve runs inside the branch's pg transaction (`currentPg()`): nothing is visible to anyone until the
 * coordinator commits, and PREPARE TRANSACTION keeps it safe across a crash in between. A restarted instance
 * (same INSTANCE_ID, same PORT) finds its prepared branches and finishes them with the coordinator.
 *
 * With METRICS_PORT set it serves Prometheus metrics: its calls (RpcMetrics) and its branches (ParticipantMetrics)
 * on one endpoint; examples/demo.ts reads them to check that no branch was left unfinished.
 */
import { FailedPreconditionError } from '../common';
import { RpcMetrics, startServer } from '../rpc';
import {
  currentBranch,
  currentPg,
  Participant,
  ParticipantMetrics,
  participantBinding,
  PgBranchStore,
  pgResource,
  txServerMiddleware,
  type ParticipantOptions,
} from '../txapi';
import { InventoryService } from './gen/shop/v1/shop';
import { freePort, runService, serverTracing, shopEnv, shopRecovery, shopRegistry } from './shop-env';
import { ensureSchema, INVENTORY_SCHEMA, shopPool } from './shop-schema';

runService('inventory', async () => {
  const registry = shopRegistry();
  const instanceId = shopEnv.instanceId('inventory');
  // Two pools: open branches hold the resource's connections until they prepare, and the branch store must
  // still be able to write then.
  const pool = shopPool(shopEnv.databaseUrl, 12);
  const storePool = shopPool(shopEnv.databaseUrl, 4);
  await ensureSchema(pool, INVENTORY_SCHEMA);

  // The port is fixed before the participant starts: it names its address in the branches it reports.
  const port = shopEnv.port || (await freePort());
  const metrics = new RpcMetrics();
  const branchMetrics = new ParticipantMetrics({ registry: metrics.registry });
  const participantOptions: ParticipantOptions = {
    service: 'inventory',
    instanceId,
    address: `127.0.0.1:${port}`,
    registry, // in-doubt recovery asks the coordinator answering for the xid's owner now (HA)
    tracing: shopEnv.tracing, // its outcome queries too
    store: new PgBranchStore({ pool: storePool }),
    resources: [pgResource({ name: 'stock', pool })],
    ...shopRecovery,
  };
  const participant = new Participant(branchMetrics.instrument(participantOptions));
  await participant.start();

  const server = await startServer({
    port,
    registry,
    instance: { instanceId },
    middleware: [...serverTracing(), metrics.serverMiddleware, txServerMiddleware(participant)],
    services: [
      // What the coordinator calls: Prepare / Commit / Rollback.
      participantBinding(participant), // answers the coordinator: Prepare / Commit / Rollback
      // What the order service calls, inside its transaction.
      {
        name: 'inventory',
        definition: InventoryService,
        handlers: {
          reserve: async ({ request }) => {
            const pg = currentPg();
            // A row held by another order's prepared branch waits at most this long (then this order fails).
            await pg.query(`SET LOCAL lock_timeout = '2s'`);
            const r = await pg.query<{ unit_price_cents: string; stock: number }>(
              `UPDATE items SET stock = stock - $2, sold = sold + $2
                WHERE sku = $1 AND stock >= $2 RETURNING unit_price_cents, stock`,
              [request.sku, request.quantity],
            );
            if (r.rowCount === 0) throw new FailedPreconditionError(`out of stock: ${request.sku}`);
            await pg.query('INSERT INTO reservations VALUES ($1, $2, $3, $4)', [
              request.orderId,
              request.sku,
              request.quantity,
              currentBranch().xid,
            ]);
            return {
              unitPriceCents: Number(r.rows[0].unit_price_cents),
              leftInStock: r.rows[0].stock,
            };
          },
        },
      },
    ],
  });

  const endpoint = shopEnv.metricsPort === undefined ? undefined : await metrics.serve(shopEnv.metricsPort);

  return {
    address: server.address,
    metrics: endpoint?.address,
    stop: async () => {
      await server.stop(); // deregisters first, then drains
      await endpoint?.close();
      await participant.stop();
      await registry.close();
      await pool.end();
      await storePool.end();
    },
  };
});
