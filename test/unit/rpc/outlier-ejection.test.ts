import { strict as assert } from 'node:assert';
import { ManualClock } from '../../../common/clock';
import { OutlierDetector } from '../../../rpc/outlier-ejection';

describe('rpc outlier ejection', () => {
  const make = () => {
    const clock = new ManualClock();
    const d = new OutlierDetector({
      consecutiveFailures: 3,
      baseEjectionMs: 1000,
      maxEjectionMs: 5000,
      clock,
    });
    return { clock, d };
  };

  it('ejects after N consecutive failures, for the base time', () => {
    const { clock, d } = make();
    assert.equal(d.onFailure('a'), false);
    assert.equal(d.onFailure('a'), false);
    assert.equal(d.onFailure('a'), true);
    assert.equal(d.isEjected('a'), true);
    clock.advance(999);
    assert.equal(d.isEjected('a'), true);
    clock.advance(2);
    assert.equal(d.isEjected('a'), false);
  });

  it('tells at once whether any instance may be out, so callers skip the list when none is', () => {
    const { clock, d } = make();
    assert.equal(d.anyEjected(), false);
    d.onFailure('a');
    d.onFailure('a');
    assert.equal(d.anyEjected(), false, 'failing, not out yet');
    d.onFailure('a');
    assert.equal(d.anyEjected(), true);
    clock.advance(1001);
    assert.equal(d.anyEjected(), false, 'its ejection ended');
  });

  it('a success in between resets the count', () => {
    const { d } = make();
    d.onFailure('a');
    d.onFailure('a');
    d.onSuccess('a');
    d.onFailure('a');
    d.onFailure('a');
    assert.equal(d.isEjected('a'), false);
  });

  it('doubles the ejection time each time, up to the ceiling', () => {
    const { clock, d } = make();
    const eject = () => [1, 2, 3].forEach(() => d.onFailure('a'));
    const lengths: number[] = [];
    for (let i = 0; i < 5; i++) {
      eject();
      let t = 0;
      while (d.isEjected('a')) {
        clock.advance(100);
        t += 100;
      }
      lengths.push(t);
    }
    assert.deepEqual(lengths, [1000, 2000, 4000, 5000, 5000]);
  });

  it('failures while ejected do not extend the ejection; forget() clears an instance', () => {
    const { clock, d } = make();
    [1, 2, 3].forEach(() => d.onFailure('a'));
    clock.advance(500);
    for (let i = 0; i < 10; i++) d.onFailure('a');
    clock.advance(501);
    assert.equal(d.isEjected('a'), false);
    [1, 2, 3].forEach(() => d.onFailure('b'));
    d.forget('b');
    assert.equal(d.isEjected('b'), false);
  });
});
