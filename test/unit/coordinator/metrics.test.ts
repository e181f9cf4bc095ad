/**
 * CoordinatorMetrics' totals read from the managers and logs when scraped (plain objects stand in for the managers
 * and the logs).
 */
import { strict as assert } from 'node:assert';
import { CoordinatorMetrics, type LiveTransactions } from '../../../coordinator/metrics';

describe('CoordinatorMetrics: totals over managers and logs that come and go', () => {
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

  it("totals each log's writes and batches, and keeps a retired log's in the total", async () => {
    const metrics = new CoordinatorMetrics({ coordinatorId: 'c1' });
    const ownStats = { writes: 10, batches: 2 };
    const own = { writeStats: () => ({ ...ownStats }) };
    const takenOver = { writeStats: () => ({ writes: 30, batches: 3 }) };
    const noStats = {}; // a TxLog without writeStats counts nothing
    let logs: object[] = [own, takenOver, noStats];
    metrics.observeLogs(() => logs);
    const read = async (name: string) =>
      (await metrics.registry.getSingleMetric(name)!.get()).values[0]?.value;
    assert.equal(await read('dmtp_coordinator_log_writes_total'), 40);
    assert.equal(await read('dmtp_coordinator_log_batches_total'), 5);
    // The taken-over owner's log is retired (handed back); the own one writes 5 more records in one batch.
    logs = [own];
    ownStats.writes = 15;
    ownStats.batches = 3;
    // Before, the sum over the logs left (15) was below what had been counted (40): nothing was added until the
    // own log alone passed 40.
    assert.equal(await read('dmtp_coordinator_log_writes_total'), 45);
    assert.equal(await read('dmtp_coordinator_log_batches_total'), 6);
    // Scraped again with nothing new: nothing added.
    assert.equal(await read('dmtp_coordinator_log_writes_total'), 45);
  });
});
