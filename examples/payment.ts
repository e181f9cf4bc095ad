/**
 * The payment service: a DMTP participant in its own PostgreSQL database (`shop_payment`), two instances.
 *
 *   DATABASE_URL=postgres://…/shop_payment INSTANCE_ID=payment-1 npx tsx examples/payment.ts
 *
 * Charge writes the payment inside the branch's pg transaction; a declined card throws, the order service's
 * transaction rolls back, and no other service keeps anything of that order.
 */
import { FailedPreconditionError } from '../common';
import { startServer } from '../rpc';
import {
  currentBranch,
  currentPg,
  Participant,
  participantBinding,
  PgBranchStore,
  pgResource,
  txServerMiddleware,
} from '../txapi';
import { PaymentService } from './gen/shop/v1/shop';
import { DECLINED_CARD } from './payment-cards';
import { freePort, runService, serverTracing, shopEnv, shopRecovery, shopRegistry } from './shop-env';
import { ensureSchema, PAYMENT_SCHEMA, shopPool } from './shop-schema';

runService('payment', async () => {
  const registry = shopRegistry();
  const instanceId = shopEnv.instanceId('payment');
  const pool = shopPool(shopEnv.databaseUrl, 12);
  const storePool = shopPool(shopEnv.databaseUrl, 4);
  await ensureSchema(pool, PAYMENT_SCHEMA);

  const port = shopEnv.port || (await freePort());
  const participant = new Participant({
    service: 'payment',
    instanceId,
    address: `127.0.0.1:${port}`,
    registry, // in-doubt recovery asks the coordinator answering for the xid's owner now (HA)
    tracing: shopEnv.tracing, // its outcome queries too
    store: new PgBranchStore({ pool: storePool }),
    resources: [pgResource({ name: 'payments', pool })],
    ...shopRecovery,
  });
  await participant.start();

  const server = await startServer({
    port,
    registry,
    instance: { instanceId },
    middleware: [...serverTracing(), txServerMiddleware(participant)],
    services: [
      participantBinding(participant), // answers the coordinator: Prepare / Commit / Rollback
      {
        name: 'payment',
        definition: PaymentService,
        handlers: {
          charge: async ({ request }) => {
            if (request.card === DECLINED_CARD) throw new FailedPreconditionError('card declined');
            await currentPg().query('INSERT INTO payments VALUES ($1, $2, $3, $4, $5)', [
              request.orderId,
              request.customer,
              request.card,
              request.amountCents,
              currentBranch().xid,
            ]);
            return { paymentId: `pay-${request.orderId}` };
          },
        },
      },
    ],
  });

  return {
    address: server.address,
    stop: async () => {
      await server.stop();
      await participant.stop();
      await registry.close();
      await pool.end();
      await storePool.end();
    },
  };
});
