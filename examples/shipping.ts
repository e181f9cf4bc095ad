/**
 * The shipping service: a Kafka consumer group reacting to OrderPlaced. It never takes part in the order's
 * transaction — it sees the order only once the transaction committed, because the coordinator publishes the
 * events a transaction staged if and only if it commits. Run as many as you like: one group, one consumer per
 * partition.
 *
 *   DATABASE_URL=postgres://…/shop_shipping INSTANCE_ID=shipping-1 npx tsx examples/shipping.ts
 *
 *   SHIPPING_GROUP   the consumer group (default shipping; the demo names one per run)
 *
 * Delivery is at least once, so the handler is idempotent on the event id (`<xid>:<sequence>`, the same on
 * every redelivery): the subscription drops recent repeats (`dedupe: true`) and the shipments table's primary
 * key drops the rest (another group member's, or one from before a restart).
 */
import { ensureTopics, subscribe } from '../events';
import { startServer } from '../rpc';
import { ShippingService } from './gen/shop/v1/shop';
import { runService, serverTracing, shopEnv, shopRegistry } from './shop-env';
import { ensureSchema, SHIPPING_SCHEMA, shopPool } from './shop-schema';
import { ORDER_PLACED_HEADERS, orderPlacedOf } from './order-placed';

runService('shipping', async () => {
  const registry = shopRegistry();
  const instanceId = shopEnv.instanceId('shipping');
  const pool = shopPool(shopEnv.databaseUrl, 4);
  await ensureSchema(pool, SHIPPING_SCHEMA);
  await ensureTopics({ brokers: shopEnv.kafka }, [shopEnv.ordersTopic], { partitions: 3 });

  const sub = await subscribe({
    brokers: shopEnv.kafka,
    topics: [shopEnv.ordersTopic],
    group: process.env.SHIPPING_GROUP || 'shipping',
    filter: { headers: ORDER_PLACED_HEADERS },
    dedupe: true,
    fromBeginning: true,
    concurrency: 3,
    tracing: shopEnv.tracing,
    handler: async (event) => {
      const order = orderPlacedOf(event.value);
      await pool.query(
        `INSERT INTO shipments (event_id, order_id, sku, quantity, shipped_by)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING`,
        [event.id, order.orderId, order.sku, order.quantity, instanceId],
      );
    },
  });
  await sub.joined();

  // Registered like every other service, with one call to ask where an order stands.
  const server = await startServer({
    registry,
    instance: { instanceId },
    middleware: serverTracing(),
    services: [
      {
        name: 'shipping',
        definition: ShippingService,
        handlers: {
          track: async ({ request }) => {
            const r = await pool.query<{ event_id: string }>(
              'SELECT event_id FROM shipments WHERE order_id = $1',
              [request.orderId],
            );
            return { shipped: r.rowCount! > 0, eventId: r.rows[0]?.event_id ?? '' };
          },
        },
      },
    ],
  });

  return {
    address: server.address,
    stop: async () => {
      await server.stop();
      await sub.stop(); // in-flight handlers finish, offsets committed, group left
      await registry.close();
      await pool.end();
    },
  };
});
