import { strict as assert } from 'node:assert';
import {
  arrivalLatencies,
  measurable,
  mergeResults,
  percentile,
  ratioFigure,
  type Figures,
  type Results,
} from '../../../bench/results';

const MACHINE = { cpus: 2, node: 'v20.0.0' };
const T1 = '2026-01-01T00:00:00.000Z';
const T2 = '2026-01-02T00:00:00.000Z';

/** A file written by an earlier run of every group. */
function oldFile(): Results {
  return {
    when: T1,
    machine: MACHINE,
    groups: { tx: { when: T1 }, rpc: { when: T1 } },
    figures: {
      'tx.2pc.tps': { value: 3000, unit: 'tx/s', baseline: 40000, ratio: 0.075 },
      'tx.1pc.tps': { value: 5000, unit: 'tx/s', baseline: 40000, ratio: 0.125 },
      'coordinator.rss_10k_inflight_mb': { value: 240, unit: 'MB' },
      'rpc.fast.calls_per_s': { value: 180000, unit: 'calls/s' },
      'registry.join_to_first_call.p99_ms': { value: 27, unit: 'ms' },
    },
  };
}

describe('bench results (bench/results.ts)', () => {
  describe('merging one group into the file', () => {
    it('drops every old figure of the re-run group, also those it did not produce this time', () => {
      const doc = mergeResults(
        oldFile(),
        'tx',
        { 'tx.2pc.tps': { value: 3100, unit: 'tx/s', baseline: 41000, ratio: 0.076 } },
        T2,
        MACHINE,
      );
      assert.deepEqual(doc.figures['tx.2pc.tps'], {
        value: 3100,
        unit: 'tx/s',
        baseline: 41000,
        ratio: 0.076,
      });
      assert.equal(doc.figures['tx.1pc.tps'], undefined, 'a part not run this time is absent, not old');
      assert.equal(
        doc.figures['coordinator.rss_10k_inflight_mb'],
        undefined,
        'coordinator.* is the tx group',
      );
      assert.deepEqual(doc.groups.tx, { when: T2 });
    });

    it("keeps the other groups' figures and when they ran", () => {
      const doc = mergeResults(oldFile(), 'tx', {}, T2, MACHINE);
      assert.equal(doc.figures['rpc.fast.calls_per_s'].value, 180000);
      assert.equal(doc.figures['registry.join_to_first_call.p99_ms'].value, 27);
      assert.deepEqual(doc.groups.rpc, { when: T1 }, 'a kept figure still says when it was measured');
      assert.equal(doc.when, T2);
    });

    it('a group that threw leaves none of its figures, and the file says why', () => {
      const doc = mergeResults(oldFile(), 'tx', new Error('coordinator did not start\nstack'), T2, MACHINE);
      assert.deepEqual(
        Object.keys(doc.figures).filter((id) => id.startsWith('tx.') || id.startsWith('coordinator.')),
        [],
      );
      assert.deepEqual(doc.groups.tx, { when: T2, error: 'coordinator did not start' });
      assert.equal(doc.figures['rpc.fast.calls_per_s'].value, 180000);
    });

    it('a file from before per-group times: its kept figures get the time the file claimed', () => {
      const old = { when: T1, machine: MACHINE, figures: oldFile().figures };
      const doc = mergeResults(old, 'pg', {}, T2, MACHINE);
      assert.deepEqual(doc.groups, { tx: { when: T1 }, rpc: { when: T1 }, pg: { when: T2 } });
    });

    it('a figure outside the group’s id prefixes is not written (a later run of the group could not replace it)', () => {
      const doc = mergeResults({}, 'pg', { 'tx.2pc.tps': { value: 1, unit: 'tx/s' } }, T2, MACHINE);
      assert.equal(doc.figures['tx.2pc.tps'], undefined);
      assert.match(doc.groups.pg?.absent?.['tx.2pc.tps'] ?? '', /prefixes/);
    });
  });

  describe('a figure that could not be measured is absent, never zero', () => {
    const cases: Figures = {
      'tx.2pc.tps': { value: 0, unit: 'tx/s', note: '1234 failed: not committed' },
      'tx.2pc.p99_ms': { value: NaN, unit: 'ms' },
      'tx.abort.tps': ratioFigure(0, 40000, 'tx/s'),
      'tx.1pc.tps': ratioFigure(5000, 0, 'tx/s'),
      'pg.transfer.tps': { value: Infinity, unit: 'tx/s' },
      'events.commit_to_consume.p99_ms': { value: Infinity, unit: 'ms' },
    };

    it('each is left out, with why (and its note)', () => {
      const { figures, absent } = measurable(cases);
      assert.deepEqual(figures, {});
      assert.deepEqual(Object.keys(absent).sort(), Object.keys(cases).sort());
      assert.equal(absent['tx.2pc.tps'], 'value is 0 (1234 failed: not committed)');
      assert.equal(absent['tx.1pc.tps'], 'baseline is 0');
    });

    it('nor does one reach the file', () => {
      const doc = mergeResults({}, 'tx', cases, T2, MACHINE);
      assert.deepEqual(doc.figures, {});
      assert.equal(doc.groups.tx?.absent?.['tx.2pc.p99_ms'], 'value is NaN');
    });

    it('a measured latency of 0 ms is kept (no call reached a leaving instance after it left)', () => {
      const { figures } = measurable({ 'registry.leave_to_last_call.p50_ms': { value: 0, unit: 'ms' } });
      assert.deepEqual(Object.keys(figures), ['registry.leave_to_last_call.p50_ms']);
    });
  });

  describe('the ratio shape', () => {
    it('value is the measured rate, baseline the baseline rate (same unit), ratio value ÷ baseline', () => {
      assert.deepEqual(ratioFigure(123.44, 200.1, 'tx/s', { goal: 'ratio >= 0.5' }), {
        value: 123.4,
        unit: 'tx/s',
        baseline: 200.1,
        ratio: 0.617,
        goal: 'ratio >= 0.5',
      });
    });

    it('a .ratio figure carrying only the ratio (unit x, no baseline) is refused', () => {
      const { figures, absent } = measurable({
        'ha.3_vs_1.ratio': { value: 0.646, unit: 'x' },
        'pg.transfer_vs_local.ratio': ratioFigure(281.3, 1784.2, 'tx/s'),
      });
      assert.deepEqual(Object.keys(figures), ['pg.transfer_vs_local.ratio']);
      assert.match(absent['ha.3_vs_1.ratio'], /needs value, baseline and ratio/);
    });
  });

  describe('latency percentiles with events that never arrived', () => {
    const sent = (n: number) => new Map(Array.from({ length: n }, (_, i) => [`x${i}`, 1000]));
    const arrivedAll = (n: number, but = 0) =>
      new Map(Array.from({ length: n - but }, (_, i) => [`x${i}`, 1005]));

    it('every event arrived: the percentiles of their latencies', () => {
      const lat = arrivalLatencies(sent(200), arrivedAll(200));
      assert.equal(percentile(lat, 99), 5);
    });

    it('2% never arrived: p99 is Infinity (left out), p50 still measured', () => {
      const lat = arrivalLatencies(sent(200), arrivedAll(200, 4));
      assert.equal(lat.length, 200, 'a missing event is counted, not skipped');
      assert.equal(percentile(lat, 99), Infinity);
      assert.equal(percentile(lat, 50), 5);
      assert.deepEqual(
        Object.keys(measurable({ 'events.x.p99_ms': { value: Infinity, unit: 'ms' } }).figures),
        [],
      );
    });
  });
});
