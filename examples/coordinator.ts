/**
 * The shop's coordinator: DMTP's two-phase-commit coordinator (its log in etcd), relaying the events that
 * committed transactions staged to Kafka, registered as 'dmtp-coordinator' so the order service finds it.
 *
 *   DMTP_COORDINATOR_ID=shop-coord-1 npx tsx examples/coordinator.ts
 *
 * (`dmtp coordinator` is the same for operators; this file shows the API, with the Kafka relay on.)
 */
import { Coordinator } from '../coordinator';
import { runService, shopEnv, shopRegistry } from './shop-env';

runService('coordinator', async () => {
  const coordinator = new Coordinator({
    // Keep the id across restarts: it owns the transactions in its log and recovers them at start.
    id: process.env.DMTP_COORDINATOR_ID || 'shop-coord-1',
    port: shopEnv.port,
    etcd: { endpoints: shopEnv.etcd, prefix: shopEnv.prefix },
    kafka: { brokers: shopEnv.kafka },
    tracing: shopEnv.tracing,
  });
  const address = await coordinator.start(); // recovery first, then it serves
  const registry = shopRegistry();
  await registry.register({ service: 'dmtp-coordinator', instanceId: coordinator.id, address });

  return {
    address,
    stop: async () => {
      await registry.close(); // leave the registry first: nobody picks a coordinator that is going away
      await coordinator.stop();
    },
  };
});
