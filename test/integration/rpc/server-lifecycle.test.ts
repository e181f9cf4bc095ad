// RpcServer's start and stop when they go wrong or cross (found by an audit). Before, a start whose registration
// failed left the server bound and SERVING with the registrations made so far live, unstoppable (the caller never
// got the object); a stop() during the start resolved at once and the start then registered a shut-down server;
// a second stop() resolved before the first had drained.
import { strict as assert } from 'node:assert';
import { FailedPreconditionError } from '../../../common';
import { MemoryRegistry } from '../../../registry';
import { checkHealth, RpcServer } from '../../../rpc';
import { EchoService, echoHandlers } from '../../support/echo-service';

const raw = (path: string) => ({
  path,
  requestStream: false as const,
  responseStream: false as const,
  requestSerialize: (b: Buffer) => b,
  requestDeserialize: (b: Buffer) => b,
  responseSerialize: (b: Buffer) => b,
  responseDeserialize: (b: Buffer) => b,
});
const OtherService = {
  echo: raw('/dmtp.test.Other/Echo'),
  whoami: raw('/dmtp.test.Other/WhoAmI'),
  sleep: raw('/dmtp.test.Other/Sleep'),
};

describe('rpc server: a start that fails or is stopped undoes itself', () => {
  let registry: MemoryRegistry;
  beforeEach(() => (registry = new MemoryRegistry()));
  afterEach(() => registry.close());

  it('a registration refused mid-start: the earlier registration is removed and the port closed', async () => {
    await registry.register({ service: 'echo-b', instanceId: 'b1', address: '127.0.0.1:1' }); // taken
    const server = new RpcServer({
      registry,
      instance: { instanceId: 'b1' },
      services: [
        { name: 'echo-a', definition: EchoService, handlers: echoHandlers('a') },
        { name: 'echo-b', definition: OtherService, handlers: echoHandlers('b') },
      ],
    });
    await assert.rejects(server.start(), /'echo-b\/b1' is already registered/);
    assert.deepEqual(await registry.instances('echo-a'), [], 'echo-a left the registry again');
    assert.equal(await checkHealth(server.address, '', 1_000), 'UNREACHABLE', 'the port is closed');
    await server.stop(); // nothing left to do, and it says so by resolving
  });

  it('a stop() during the start ends the start: nothing stays registered or bound', async () => {
    const server = new RpcServer({
      registry,
      drainDelayMs: 0,
      services: [{ name: 'echo', definition: EchoService, handlers: echoHandlers('s') }],
    });
    const started = server.start().catch((e: unknown) => e);
    await server.stop();
    const err = await started;
    assert.ok(err instanceof FailedPreconditionError, String(err));
    assert.deepEqual(await registry.instances('echo'), []);
    assert.equal(server.health.get(''), 'NOT_SERVING');
  });

  it('every stop() waits for the same drain', async () => {
    const server = new RpcServer({
      registry,
      drainDelayMs: 300,
      services: [{ name: 'echo', definition: EchoService, handlers: echoHandlers('s') }],
    });
    await server.start();
    let firstDone = false;
    const first = server.stop().then(() => (firstDone = true));
    await server.stop(); // before, this one resolved at once, while the first still waited its drain delay
    assert.equal(firstDone, true, 'the second stop() resolved only once the first had finished');
    await first;
  });
});
