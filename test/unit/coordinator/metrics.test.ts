/** CoordinatorMetrics' totals read from the managers when scraped (plain objects stand in for the managers). */
import { strict as assert } from 'node:assert';
import { CoordinatorMetrics, type LiveTransactions } from '../../../coordinator/metrics';

describe('CoordinatorMetrics: operator actions', () => {
  it("totals each manager's resolves and settles, and keeps a retired manager's in the total", async () => {
    const metrics = new CoordinatorMetrics({ coordinatorId: 'c1' });
    const manager = (actions: { resolve: number; settle: number }): LiveTransactions => ({
      counts: () => ({}),
      inFlight: 0,
      operatorActions: () => ({ ...actions }),
    });
    const ownActions = { resolve: 1, settle: 0 };
    const own = manager(ownActions);
    const takenOver = manager({ resolve: 2, settle: 1 });
    let managers = [own, takenOver];
    metrics.observe(() => managers);
    const read = async (action: string) =>
      (await metrics.registry.getSingleMetric('dmtp_coordinator_operator_actions_total')!.get()).values.find(
        (v) => v.labels.action === action,
      )?.value;
    assert.equal(await read('resolve'), 3);
    assert.equal(await read('settle'), 1);
    // The taken-over owner's manager is retired (handed back); the own one resolves once more.
    managers = [own];
    ownActions.resolve = 2;
    // Before, the sum over the managers left (2) was below what had been counted (3): nothing was added.
    assert.equal(await read('resolve'), 4);
    assert.equal(await read('settle'), 1);
  });
});
