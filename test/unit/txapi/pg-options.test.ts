/** pgResource's numeric options are checked when the resource is made, before any pool or connection exists. */
import { strict as assert } from 'node:assert';
import { InvalidArgumentError } from '../../../common';
import { pgResource, PG_DEFAULTS } from '../../../txapi/resources/pg';

const URL = 'postgres://nobody@127.0.0.1:1/none'; // never connected to: making a pool opens nothing

describe('pgResource options', () => {
  const refused = (option: string) => (err: unknown) =>
    err instanceof InvalidArgumentError &&
    err.message.startsWith(`pgResource: ${option} must be a whole number`) &&
    (err.details as { option?: string }).option === option;

  it('refuses a maxConnections that is not a whole number ≥ 1 (a negative one made start() hang for good)', () => {
    for (const maxConnections of [-1, 0, Number.NaN, 2.5, Number.POSITIVE_INFINITY]) {
      assert.throws(
        () => pgResource({ name: 'db', connectionString: URL, maxConnections }),
        refused('maxConnections'),
        String(maxConnections),
      );
    }
  });

  it('refuses an idleInTransactionGraceMs that is not a whole number ≥ 0', () => {
    for (const idleInTransactionGraceMs of [-1, Number.NaN, 1.5, 2 ** 31]) {
      assert.throws(
        () => pgResource({ name: 'db', connectionString: URL, idleInTransactionGraceMs }),
        refused('idleInTransactionGraceMs'),
        String(idleInTransactionGraceMs),
      );
    }
  });

  it('refuses a queryTimeoutMs that is not a whole number ≥ 1', () => {
    for (const queryTimeoutMs of [0, -1, Number.NaN, 1.5, 2 ** 31]) {
      assert.throws(
        () => pgResource({ name: 'db', connectionString: URL, queryTimeoutMs }),
        refused('queryTimeoutMs'),
        String(queryTimeoutMs),
      );
    }
  });

  it('sizes its own pool as asked, or by the default', async () => {
    const poolMax = (r: ReturnType<typeof pgResource>) =>
      (r.pool as unknown as { options: { max: number } }).options.max;
    const one = pgResource({
      name: 'db',
      connectionString: URL,
      maxConnections: 1,
      idleInTransactionGraceMs: 0,
    });
    const dflt = pgResource({ name: 'db', connectionString: URL, maxConnections: undefined });
    try {
      assert.equal(poolMax(one), 1);
      assert.equal(poolMax(dflt), PG_DEFAULTS.maxConnections);
    } finally {
      await one.stop();
      await dflt.stop();
    }
  });
});
