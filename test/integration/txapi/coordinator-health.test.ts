// CoordinatorClients' view of a coordinator's health, against a real server in this process answering as a
// coordinator does (rpc's startServer, multiplexed path): what an answer says of the coordinator's health.
import { strict as assert } from 'node:assert';
import { InternalError, mintXid, UnavailableError } from '../../../common';
import { CoordinatorService } from '../../../proto';
import { startServer, type RpcServer } from '../../../rpc/server';
import { MemoryRegistry } from '../../../registry';
import { createDmtp } from '../../../txapi';
import { COORDINATOR_SERVICES } from '../../../txapi/coordinator-routes';
import { startStubCoordinator } from '../../support/txapi-grpc';
import { CoordinatorClients } from '../../../txapi/coordinator-client';

describe('txapi CoordinatorClients: a coordinator answering UNAVAILABLE itself is not down', () => {
  let server: RpcServer;
  let clients: CoordinatorClients;
  before(async () => {
    server = await startServer({
      host: '127.0.0.1',
      port: 0,
      services: [
        {
          name: 'probe-coordinator',
          definition: CoordinatorService,
          // Every method answers as a coordinator whose one-phase outcome is still pending.
          handlers: Object.fromEntries(
            Object.keys(CoordinatorService).map((m) => [
              m,
              () => {
                throw new UnavailableError('the one-phase outcome is pending: ask again');
              },
            ]),
          ) as never,
        },
      ],
    });
    clients = new CoordinatorClients();
  });
  after(async () => {
    clients.close();
    await server.stop();
  });

  it('keeps it a candidate: its own UNAVAILABLE answer is not a dead connection', async () => {
    // Before, any UNAVAILABLE left the coordinator out of new transactions for 2 s, doubling to 30 s.
    await assert.rejects(clients.queryOutcome(server.address, mintXid('c'), 'b', 2_000), { code: 14 });
    assert.equal(clients.isDown(server.address), false);
    // A dead address still counts as down.
    await assert.rejects(clients.queryOutcome('127.0.0.1:1', mintXid('c'), 'b', 2_000), { code: 14 });
    assert.equal(clients.isDown('127.0.0.1:1'), true);
  });
});

describe('txapi outcomeOf: a coordinator answering bytes that are no QueryOutcome answer', () => {
  let server: RpcServer;
  before(async () => {
    // Its QueryOutcome answers an unfinished varint: no protobuf message.
    const garbled = {
      queryOutcome: {
        ...CoordinatorService.queryOutcome,
        responseSerialize: () => Buffer.from([0xff, 0xff, 0xff]),
      },
    };
    server = await startServer({
      host: '127.0.0.1',
      port: 0,
      services: [
        { name: 'garbled-coordinator', definition: garbled, handlers: { queryOutcome: () => ({}) } as never },
      ],
    });
  });
  after(() => server?.stop());

  it('rejects with INTERNAL naming the xid, not a bare decoding error', async () => {
    // Before, the protobuf decoder's own Error escaped: no gRPC code, no xid.
    const dmtp = createDmtp({ coordinator: { id: 'c', address: server.address } });
    const xid = mintXid('c');
    try {
      const err = await dmtp.outcomeOf(xid).then(
        () => assert.fail('answered'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof InternalError, String(err));
      assert.equal((err as InternalError & { xid?: string }).xid, xid);
      assert.match(
        err.message,
        /answered \/dmtp\.v1\.Coordinator\/QueryOutcome with a message this client cannot read/,
      );
    } finally {
      dmtp.close();
    }
  });
});

describe("txapi outcomeOf: the owner's route first", () => {
  it('asks the coordinator the registry routes the owner to, not a fixed address gone after a takeover', async () => {
    // Before, a Dmtp given a fixed coordinator asked that address alone, also once a survivor had taken its
    // transactions over (registered as the owner's route): every outcomeOf failed UNAVAILABLE.
    const stub = await startStubCoordinator();
    const registry = new MemoryRegistry();
    const dmtp = createDmtp({ coordinator: { id: 'c1', address: '127.0.0.1:1' }, registry });
    try {
      await registry.register({
        service: COORDINATOR_SERVICES.owner,
        instanceId: 'c1',
        address: stub.address,
      });
      const xid = mintXid('c1');
      assert.equal((await dmtp.outcomeOf(xid)).status, 'aborted');
      assert.deepEqual(
        stub.queries.map((q) => q.xid),
        [xid],
      );
    } finally {
      dmtp.close();
      await stub.stop();
      await registry.close();
    }
  });
});
