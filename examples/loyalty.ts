/**
 * The loyalty service: a DMTP participant in front of a legacy system that cannot prepare (legacy-points.ts),
 * through the reservation adapter — try (hold the points) in the business call, confirm at commit, cancel at
 * rollback. Its branch records live in a file (FileBranchStore), so confirm/cancel still happen after a restart.
 *
 *   LOYALTY_DIR=.dmtp/loyalty LEGACY_TIMEOUT_MS=400 npx tsx examples/loyalty.ts
 *
 *   LOYALTY_DIR         where the branch store and the legacy ledger live (default .dmtp/examples/loyalty)
 *   LEGACY_TIMEOUT_MS   how long a hold may take before the order gives up on it (default 400)
 *   LEGACY_SLOW_MS      how long the legacy system takes for `slow-` customers (default 1500)
 */
import * as path from 'node:path';
import { DeadlineExceededError } from '../common';
import { startServer } from '../rpc';
import {
  currentBranch,
  FileBranchStore,
  Participant,
  participantBinding,
  recordReservation,
  reservationResource,
  txServerMiddleware,
} from '../txapi';
import { LoyaltyService } from './gen/shop/v1/shop';
import { LegacyPoints } from './legacy-points';
import { freePort, runService, serverTracing, shopEnv, shopRecovery, shopRegistry } from './shop-env';

const dir = process.env.LOYALTY_DIR || path.join('.dmtp', 'examples', 'loyalty');
const timeoutMs = Number(process.env.LEGACY_TIMEOUT_MS || 400);

/** Rejects when `p` takes longer than `ms` (the legacy call itself may still complete later). */
function within<T>(ms: number, p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DeadlineExceededError(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

runService('loyalty', async () => {
  const registry = shopRegistry();
  const instanceId = shopEnv.instanceId('loyalty');
  const legacy = new LegacyPoints({
    file: path.join(dir, 'legacy-ledger.json'),
    slowMs: Number(process.env.LEGACY_SLOW_MS || 1_500),
  });

  const port = shopEnv.port || (await freePort());
  const participant = new Participant({
    service: 'loyalty',
    instanceId,
    address: `127.0.0.1:${port}`,
    registry, // in-doubt recovery asks the coordinator answering for the xid's owner now (HA)
    tracing: shopEnv.tracing, // its outcome queries too
    store: new FileBranchStore({ path: path.join(dir, `${instanceId}.branches.jsonl`) }),
    resources: [
      reservationResource({
        name: 'points',
        check: async (b) => legacy.state(b.data.holdKey) === 'held',
        confirm: (b) => legacy.confirm(b.data.holdKey),
        cancel: (b) => legacy.cancel(b.data.holdKey),
      }),
    ],
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
        name: 'loyalty',
        definition: LoyaltyService,
        handlers: {
          award: async ({ request }) => {
            // Record the key BEFORE holding: if we crash in between, rollback can still cancel by it.
            const { xid, branchId } = currentBranch();
            const holdKey = `${xid}|${branchId}`;
            await recordReservation({ holdKey });
            const hold = legacy.hold(holdKey, {
              orderId: request.orderId,
              customer: request.customer,
              points: request.points,
            });
            hold.catch(() => undefined); // a late hold that is refused is not an error anyone waits for
            await within(timeoutMs, hold, 'the legacy loyalty system');
            return { holdId: holdKey };
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
    },
  };
});
