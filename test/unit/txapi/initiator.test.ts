// The initiator's own bookkeeping, with no coordinator: transactions here enlist nothing, so they commit without a
// round trip, and a question that does reach the coordinator (nobody listens at 127.0.0.1:1) fails UNAVAILABLE.
import { strict as assert } from 'node:assert';
import { FailedPreconditionError, InvalidArgumentError, UnavailableError } from '../../../common';
import { createDmtp, currentTx, NestedTransactionError, type DmtpOptions, type Tx } from '../../../txapi';
import { LOCAL_COMMITS_KEPT } from '../../../txapi/initiator';

const coordinator = { id: 'init-coord', address: '127.0.0.1:1' };

describe('txapi initiator', () => {
  const dmtp = createDmtp({ coordinator, queryTimeoutMs: 2_000 });
  after(() => dmtp.close());

  describe('outcomeOf a transaction it committed with nothing to commit', () => {
    it('answers committed, as transaction() and commit() did, without asking the coordinator', async () => {
      // Before, it asked the coordinator, which never heard of the xid and answered aborted (presumed abort).
      let xid = '';
      await dmtp.transaction(async (tx) => void (xid = tx.xid));
      assert.deepEqual(await dmtp.outcomeOf(xid), { status: 'committed' });

      const tx = await dmtp.begin();
      assert.deepEqual(await tx.commit(), { status: 'committed' });
      assert.deepEqual(await dmtp.outcomeOf(tx.xid), { status: 'committed' });
    });

    it('keeps the last LOCAL_COMMITS_KEPT of them, and none that rolled back: those the coordinator answers', async () => {
      const own = createDmtp({ coordinator, queryTimeoutMs: 2_000 });
      try {
        const rolledBack = await own.begin();
        await rolledBack.rollback('test');
        const first = await own.begin();
        await first.commit();
        let last: Tx = first;
        for (let i = 0; i < LOCAL_COMMITS_KEPT; i++) {
          last = await own.begin();
          await last.commit();
        }
        assert.deepEqual(await own.outcomeOf(last.xid), { status: 'committed' });
        // Dropped past the bound (and never kept): asked of the coordinator, here unreachable.
        await assert.rejects(own.outcomeOf(first.xid), UnavailableError);
        await assert.rejects(own.outcomeOf(rolledBack.xid), UnavailableError);
      } finally {
        own.close();
      }
    });
  });

  describe('a context its transaction has ended, kept by what its block started (a timer, a background loop)', () => {
    /** Runs `later` from the context of a transaction's block once that transaction has committed. */
    async function fromEndedTransaction<T>(later: () => Promise<T>): Promise<{ ended: string; value: T }> {
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      let started!: Promise<T>;
      let ended = '';
      await dmtp.transaction(async (tx) => {
        ended = tx.xid;
        // A continuation registered in the block keeps its context, as a timer or a lazily started loop does.
        started = gate.then(later);
      });
      release();
      return { ended, value: await started };
    }

    it('is no outer transaction: transaction() and begin() start one of their own there', async () => {
      // Before, both were refused as nested in the transaction that had ended, for as long as the loop ran.
      const { ended, value } = await fromEndedTransaction(async () => {
        const begun = await dmtp.begin();
        assert.deepEqual(await begun.commit(), { status: 'committed' });
        const ran = await dmtp.transaction(async (tx) => {
          assert.equal(currentTx()?.xid, tx.xid);
          return tx.xid;
        });
        return [begun.xid, ran];
      });
      assert.ok(!value.includes(ended), `${value.join()} are new transactions, not ${ended}`);
    });

    it('is not joined: { join: true } there is refused, naming the ended transaction, and runs nothing', async () => {
      // Before, the block "joined" the ended transaction: its calls were refused and its events never staged. Run
      // as a transaction of its own it would commit alone work meant for one that may have rolled back (a
      // Promise.all sibling still running when its outer block threw).
      let ran = false;
      const { ended, value } = await fromEndedTransaction(() =>
        dmtp
          .transaction(async () => void (ran = true), { join: true })
          .then(
            () => undefined,
            (e: Error) => e,
          ),
      );
      assert.ok(value instanceof FailedPreconditionError, String(value));
      assert.match(value.message, new RegExp(`transaction ${ended}, which this block would join, has ended`));
      assert.equal(ran, false);
    });

    it('while the transaction runs, its blocks are still refused as nested, or joined when asked', async () => {
      await dmtp.transaction(async (outer) => {
        const inTimer = await new Promise<unknown>((resolve) =>
          setImmediate(() => dmtp.transaction(async () => 1).catch(resolve)),
        );
        assert.ok(inTimer instanceof NestedTransactionError);
        const joined = await dmtp.transaction(async (tx) => tx.xid, { join: true });
        assert.equal(joined, outer.xid);
      });
    });
  });

  it('stages each event at the cost of that event alone, not of every event staged before it', async () => {
    // Before, each publish summed the sizes of all staged events again (a JSON.stringify of each one's topic and
    // headers): 10,677 events blocked the event loop for 72 s. Counted here by the serialisations a publish does.
    const many = createDmtp({ coordinator, maxEventsPerTx: 1_000_000, maxEventBytes: 1024 ** 3 });
    const tx = await many.begin();
    const stringify = JSON.stringify;
    let calls = 0;
    const costOfPublish = (i: number) => {
      calls = 0;
      JSON.stringify = ((...args: Parameters<typeof stringify>) => {
        calls++;
        return stringify(...args);
      }) as typeof stringify;
      try {
        tx.publish('orders', { key: `k${i}`, value: { i }, headers: { h: 'v' } });
      } finally {
        JSON.stringify = stringify;
      }
      return calls;
    };
    try {
      const first = costOfPublish(0);
      for (let i = 1; i < 500; i++) tx.publish('orders', { key: `k${i}`, value: { i }, headers: { h: 'v' } });
      assert.ok(first > 0, 'a publish serialises its event');
      assert.equal(costOfPublish(500), first);
    } finally {
      await tx.rollback('test done');
      many.close();
    }
  });

  describe('options', () => {
    const refused: [string, unknown, RegExp][] = [
      ['no options', undefined, /createDmtp: options must be an object, got undefined/],
      ['null options', null, /options must be an object/],
      [
        'a coordinator without an id (every xid was minted for owner "undefined" and failed at Commit)',
        { coordinator: { address: '127.0.0.1:1' } },
        /createDmtp: coordinator.id must be .* got undefined/,
      ],
      [
        'a coordinator id that is no string',
        { coordinator: { id: 7, address: '127.0.0.1:1' } },
        /coordinator.id/,
      ],
      [
        'an initiator name longer than the coordinator takes (every Commit was refused)',
        { coordinator, initiator: 'x'.repeat(257) },
        /createDmtp: initiator is 257 characters long: the coordinator takes at most 256/,
      ],
      ['an initiator that is no string', { coordinator, initiator: 12 }, /initiator must be a string/],
      ['a registry without instances()', { registry: {} }, /createDmtp: registry must be a Registry/],
      ['a clock without now()', { coordinator, clock: null }, /createDmtp: clock must have now\(\)/],
    ];
    for (const [what, options, message] of refused) {
      it(`refuses ${what} when created`, () => {
        assert.throws(
          () => createDmtp(options as DmtpOptions),
          (e: Error) => e instanceof InvalidArgumentError && message.test(e.message),
        );
      });
    }

    it('takes an initiator name of the longest length the coordinator takes', () => {
      createDmtp({ coordinator, initiator: 'x'.repeat(256) }).close();
    });

    it('refuses a block that is not a function before beginning anything', async () => {
      await assert.rejects(
        dmtp.transaction(42 as unknown as () => Promise<void>),
        (e: Error) =>
          e instanceof InvalidArgumentError && /block must be a function, not number/.test(e.message),
      );
    });

    it('refuses a bad timeoutMs on a joined block, which runs under the outer deadline', async () => {
      // Before, the joined block ran and the value was silently ignored.
      let ran = false;
      await dmtp.transaction(async () => {
        await assert.rejects(
          dmtp.transaction(async () => void (ran = true), { join: true, timeoutMs: -5 }),
          (e: Error) =>
            e instanceof InvalidArgumentError && /timeoutMs must be a whole number/.test(e.message),
        );
        assert.equal(
          await dmtp.transaction(async () => 'joined', { join: true, timeoutMs: 1_000 }),
          'joined',
        );
      });
      assert.equal(ran, false);
    });
  });
});
