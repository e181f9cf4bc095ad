/**
 * The order service: the initiator. PlaceOrder runs ONE DMTP transaction that takes the stock (inventory),
 * charges the card (payment), awards points (loyalty, a legacy system) and stages the OrderPlaced event — all
 * of it happens, or none of it does, and OrderPlaced goes out only if it all happened.
 *
 *   npx tsx examples/order.ts          # finds 'inventory', 'payment', 'loyalty' and 'dmtp-coordinator' in etcd
 *
 * The calls are ordinary typed gRPC calls through DMTP's client; `txClientMiddleware` makes every call made
 * inside `dmtp.transaction(...)` carry the transaction, and collects the branches the participants report.
 * With METRICS_PORT set it serves Prometheus metrics: its calls (RpcMetrics) and its transactions
 * (InitiatorMetrics) on one endpoint.
 */
import { RpcMetrics, startServer, client } from '../rpc';
import { createDmtp, InitiatorMetrics, TransactionOutcomeUnknownError, txClientMiddleware } from '../txapi';
import {
  InventoryService,
  LoyaltyService,
  OrderService,
  OrderStatus,
  PaymentService,
  type PlaceOrderResponse,
} from './gen/shop/v1/shop';
import { ORDER_PLACED_HEADERS, type OrderPlaced } from './order-placed';
import { clientTracing, runService, serverTracing, shopEnv, shopRegistry } from './shop-env';

/** An order that takes longer than this is rolled back everywhere. */
const ORDER_TIMEOUT_MS = Number(process.env.ORDER_TIMEOUT_MS || 5_000);

runService('order', async () => {
  const registry = shopRegistry();
  const dmtp = createDmtp({ registry, initiator: 'order', tracing: shopEnv.tracing });
  const metrics = new RpcMetrics();
  new InitiatorMetrics({ registry: metrics.registry }).track(dmtp); // initiator="order"
  const calls = {
    middleware: [...clientTracing(), metrics.clientMiddleware, txClientMiddleware],
    timeoutMs: 3_000,
  };
  const inventory = client(registry, 'inventory', InventoryService, calls);
  const payment = client(registry, 'payment', PaymentService, calls);
  const loyalty = client(registry, 'loyalty', LoyaltyService, calls);

  async function placeOrder(req: {
    orderId: string;
    customer: string;
    sku: string;
    quantity: number;
    card: string;
  }): Promise<PlaceOrderResponse> {
    let xid = '';
    try {
      const amountCents = await dmtp.transaction(
        async (tx) => {
          xid = tx.xid;
          const item = await inventory.reserve({
            orderId: req.orderId,
            sku: req.sku,
            quantity: req.quantity,
          });
          const amountCents = item.unitPriceCents * req.quantity;
          await payment.charge({ orderId: req.orderId, customer: req.customer, card: req.card, amountCents });
          await loyalty.award({
            orderId: req.orderId,
            customer: req.customer,
            points: Math.floor(amountCents / 100),
          });
          const event: OrderPlaced = { type: 'OrderPlaced', ...req, amountCents };
          tx.publish(shopEnv.ordersTopic, { key: req.orderId, value: event, headers: ORDER_PLACED_HEADERS });
          return amountCents;
        },
        { timeoutMs: ORDER_TIMEOUT_MS },
      );
      return { orderId: req.orderId, status: OrderStatus.ORDER_STATUS_PLACED, xid, reason: '', amountCents };
    } catch (err) {
      if (err instanceof TransactionOutcomeUnknownError) return settle(req.orderId, err.xid);
      const reason = (err as Error).message.split('\n')[0];
      return { orderId: req.orderId, status: OrderStatus.ORDER_STATUS_REJECTED, xid, reason, amountCents: 0 };
    }
  }

  /** The coordinator was out of reach at the commit point: ask it (again) what became of the transaction. */
  async function settle(orderId: string, xid: string): Promise<PlaceOrderResponse> {
    const answer = (status: OrderStatus, reason = '') => ({ orderId, status, xid, reason, amountCents: 0 });
    for (let i = 0; i < 10; i++) {
      const o = await dmtp.outcomeOf(xid).catch(() => undefined);
      if (o?.status === 'committed') return answer(OrderStatus.ORDER_STATUS_PLACED);
      if (o?.status === 'aborted') return answer(OrderStatus.ORDER_STATUS_REJECTED, o.reason);
      await new Promise((r) => setTimeout(r, 500));
    }
    return answer(OrderStatus.ORDER_STATUS_UNKNOWN, 'outcome unknown');
  }

  const server = await startServer({
    port: shopEnv.port,
    registry,
    instance: { instanceId: shopEnv.instanceId('order') },
    middleware: serverTracing(),
    services: [
      {
        name: 'order',
        definition: OrderService,
        handlers: { placeOrder: ({ request }) => placeOrder(request) },
      },
    ],
  });

  const endpoint = shopEnv.metricsPort === undefined ? undefined : await metrics.serve(shopEnv.metricsPort);

  return {
    address: server.address,
    metrics: endpoint?.address,
    stop: async () => {
      await server.stop();
      await endpoint?.close();
      await Promise.all([inventory.close(), payment.close(), loyalty.close()]);
      dmtp.close();
      await registry.close();
    },
  };
});
