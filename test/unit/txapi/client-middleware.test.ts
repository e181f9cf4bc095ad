// txClientMiddleware around rpc's client, whose retries run below it: fake transports, so which attempt reached
// which instance is certain. An attempt that may have run must reach the middleware, never be hidden by a retry.
import { strict as assert } from 'node:assert';
import { UnavailableError } from '../../../common';
import { MemoryRegistry, MemoryStore, type ServiceInstance } from '../../../registry';
import { client } from '../../../rpc';
import { txClientMiddleware } from '../../../txapi';
import { runInTx } from '../../../txapi/context';
import { EchoService } from '../../support/echo-service';
import { FakeTransport } from '../../support/fake-transport';
import { initiatorContext } from '../../support/tx-context';

/** The failure of the next attempt, whichever instance it reaches (then the attempts succeed). */
let failNext: ((address: string) => Error) | undefined;

describe('txClientMiddleware over retries of rpc client', () => {
  let registry: MemoryRegistry;
  let transports: Map<string, FakeTransport>;
  const factory = (i: ServiceInstance) => {
    const t = new FakeTransport('unary', i.address, i.instanceId);
    // The next attempt fails, whichever instance it reaches.
    t.fail = () => {
      const fail = failNext;
      failNext = undefined;
      return fail?.(t.address);
    };
    transports.set(i.instanceId, t);
    return t;
  };
  const echo = () =>
    client(registry, 'echo', EchoService, {
      transportFactory: factory,
      strategy: 'round-robin',
      middleware: [txClientMiddleware],
    });
  const ctx = initiatorContext;
  beforeEach(async () => {
    registry = new MemoryRegistry({ store: new MemoryStore() });
    transports = new Map();
    for (const [id, port] of [
      ['a', 1],
      ['b', 2],
    ] as const) {
      await registry.register({ service: 'echo', instanceId: id, address: `127.0.0.1:${port}` });
    }
  });
  afterEach(() => {
    failNext = undefined;
    registry.close();
  });

  it('does not retry an idempotent call whose attempt may have run: the transaction becomes rollback-only', async () => {
    // Before, the retry ran below the middleware: the attempt lost in transit (its work in a branch the
    // transaction held) was hidden by the retry's success elsewhere, and Commit applied the call twice.
    const c = echo();
    await c.ready();
    const tx = ctx();
    // Only the first attempt fails: a retry, if any, succeeds at the other instance.
    failNext = (address) => new UnavailableError('Connection dropped', { details: { address } });
    await runInTx(tx, () => assert.rejects(c.whoami(Buffer.alloc(0), { idempotent: true }), { code: 14 }));
    assert.equal(
      [...transports.values()].reduce((n, t) => n + t.calls, 0),
      1,
      'one attempt, not retried',
    );
    assert.match(String(tx.rollbackOnly), /^a call to echo instance (a|b) failed after it was sent/);
    await c.close();
  });

  it('still retries, in a transaction, an attempt that was never sent', async () => {
    const c = echo();
    await c.ready();
    const tx = ctx();
    failNext = (address) =>
      new UnavailableError('No connection established', { details: { address, notSent: true } });
    assert.ok(await runInTx(tx, () => c.whoami(Buffer.alloc(0))), 'answered by the other instance');
    assert.deepEqual(
      [...transports.values()].map((t) => t.calls),
      [1, 1],
      'retried',
    );
    assert.equal(tx.rollbackOnly, undefined);
    await c.close();
  });
});
