import { strict as assert } from 'node:assert';
import { DEDUPE_DEFAULTS, DedupeWindow } from '../../../events';

describe('events/dedupe', () => {
  it('remembers the last N ids and forgets the oldest beyond the window', () => {
    const w = new DedupeWindow(3);
    ['a', 'b', 'c'].forEach((id) => w.add(id));
    assert.ok(w.has('a') && w.has('b') && w.has('c'));
    w.add('d');
    assert.equal(w.has('a'), false, 'the oldest left');
    assert.ok(w.has('d'));
    assert.equal(w.count, 3);
  });

  it('refreshes an id seen again so it stays in the window', () => {
    const w = new DedupeWindow(2);
    w.add('a');
    w.add('b');
    w.add('a');
    w.add('c');
    assert.ok(w.has('a'));
    assert.equal(w.has('b'), false);
  });

  it('keeps a long id as a fixed-size hash, so the window is bounded in bytes too', () => {
    // Before, 300 ids of 300 KB each kept ~90 MB alive: the window was bounded by count only.
    const w = new DedupeWindow(3);
    const long = (c: string) => c.repeat(300_000);
    w.add(long('a'));
    w.add('short');
    assert.ok(w.has(long('a')));
    assert.equal(w.has(long('b')), false);
    assert.equal(w.has(long('a') + 'x'), false);
    assert.ok(w.has('short'));
    const kept = [...(w as unknown as { ids: Set<string> }).ids];
    assert.ok(
      kept.every((k) => k.length <= 128),
      `kept ${kept.map((k) => k.length).join(', ')} characters`,
    );
    w.add(long('a')); // refreshed, not kept twice
    assert.equal(w.count, 2);
  });

  it('is bounded by default to the documented size', () => {
    const w = new DedupeWindow();
    for (let i = 0; i < DEDUPE_DEFAULTS.windowSize + 10; i++) w.add(`id-${i}`);
    assert.equal(w.count, DEDUPE_DEFAULTS.windowSize);
    assert.equal(w.has('id-0'), false);
    assert.throws(() => new DedupeWindow(0), RangeError);
  });
});
