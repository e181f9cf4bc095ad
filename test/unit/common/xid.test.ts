import { strict as assert } from 'node:assert';
import { InvalidArgumentError, mintXid, parseXid, validateOwnerId } from '../../../common';

describe('common/xid: owner ids', () => {
  it('takes 1-64 characters of [A-Za-z0-9._-], and mints xids that name their owner', () => {
    for (const id of ['c', 'coord-1', 'a.b_c-D', 'x'.repeat(64)]) {
      validateOwnerId(id);
      assert.equal(parseXid(mintXid(id)).owner, id);
    }
  });

  it('refuses anything else, a value that is no string included (undefined passed as the text "undefined")', () => {
    for (const bad of ['', 'bad id', 'a:b', 'x'.repeat(65), undefined, null, 42, {}] as unknown[]) {
      assert.throws(
        () => validateOwnerId(bad as string),
        (e: Error) => e instanceof InvalidArgumentError && /invalid coordinator id/.test(e.message),
        String(bad),
      );
    }
  });
});
