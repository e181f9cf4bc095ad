import { strict as assert } from 'node:assert';
import { setImmediate as tick } from 'node:timers/promises';
import { contextSlot } from '../../../common';

describe('contextSlot (one AsyncLocalStorage, named slots)', () => {
  const call = contextSlot<string>('call');
  const tx = contextSlot<{ xid: string }>('tx');

  it('a slot is visible across awaits inside its run, and not outside it', async () => {
    assert.equal(call.get(), undefined);
    await call.run('c1', async () => {
      await tick();
      assert.equal(call.get(), 'c1');
    });
    assert.equal(call.get(), undefined);
  });

  it('running one slot keeps the others; undefined hides only that slot', async () => {
    await call.run('c1', () =>
      tx.run({ xid: 'x1' }, async () => {
        await tick();
        assert.equal(call.get(), 'c1');
        assert.equal(tx.get()?.xid, 'x1');
        tx.run(undefined, () => {
          assert.equal(tx.get(), undefined);
          assert.equal(call.get(), 'c1', 'the call slot stays');
        });
        call.run('c2', () => assert.equal(tx.get()?.xid, 'x1', 'the tx slot stays'));
        assert.equal(call.get(), 'c1', 'an inner run does not leak out');
      }),
    );
  });

  it('concurrent runs do not see each other', async () => {
    const seen = await Promise.all(
      ['a', 'b', 'c'].map((id) =>
        call.run(id, async () => {
          await tick();
          return call.get();
        }),
      ),
    );
    assert.deepEqual(seen, ['a', 'b', 'c']);
  });
});
