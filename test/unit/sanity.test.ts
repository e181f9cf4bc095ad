import { strict as assert } from 'node:assert';
describe('toolchain', () => {
  it('runs TypeScript tests', () => {
    const n: number = 1 + 1;
    assert.equal(n, 2);
  });
});
