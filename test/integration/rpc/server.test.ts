/**
 * Bad input and failures on an RpcServer service over real sockets: bytes that are not the method's protobuf request are the
 * caller's error (INVALID_ARGUMENT) on the unary and on the multiplexed path alike, and reach no handler.
 */
import { Client, credentials, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { strict as assert } from 'node:assert';
import { ParticipantService, type PrepareRequest } from '../../../proto';
import { Vote } from '../../../proto/gen/dmtp/v1/types';
import { MuxTransport } from '../../../rpc/mux';
import { startServer, type RpcServer } from '../../../rpc/server';
import { UnaryTransport } from '../../../rpc/transport-unary';
import { answeredByServer } from '../../../rpc/not-sent';
import { UnavailableError, type DmtpError } from '../../../common';

/** A field-1 string claiming ~4 GiB: no protobuf decoder can read it. */
const GARBAGE = Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]);

describe('rpc server: undecodable requests', function () {
  let server: RpcServer;
  let raw: Client;
  let mux: MuxTransport;
  const handled: PrepareRequest[] = [];

  before(async () => {
    server = await startServer({
      host: '127.0.0.1',
      port: 0,
      services: [
        {
          name: 'probe-participant',
          definition: ParticipantService,
          handlers: {
            prepare: ({ request }) => {
              handled.push(request);
              return { vote: Vote.VOTE_READ_ONLY, reason: '' };
            },
            commit: () => {
              // The handler's own onward call failed before it was sent, and the handler lets it through.
              throw new UnavailableError('No connection established. Last error: connect ECONNREFUSED');
            },
            rollback: () => ({}),
          },
        },
      ],
    });
    raw = new Client(server.address, credentials.createInsecure());
    mux = new MuxTransport({ address: server.address });
  });

  after(async () => {
    mux.close();
    raw.close();
    await server.stop();
  });

  it('answers INVALID_ARGUMENT on the unary path, names the method, and runs no handler', async () => {
    const err = await new Promise<ServiceError>((resolve) =>
      raw.makeUnaryRequest(
        ParticipantService.prepare.path,
        (b: Buffer) => b,
        (b: Buffer) => b,
        GARBAGE,
        new Metadata(),
        { deadline: Date.now() + 5_000 },
        (e) => resolve(e!),
      ),
    );
    assert.equal(err.code, status.INVALID_ARGUMENT, err.details);
    assert.match(err.details, /malformed \/dmtp\.v1\.Participant\/Prepare request/);
    assert.equal(handled.length, 0);
  });

  it('answers INVALID_ARGUMENT on the multiplexed path too, and serves the next good request', async () => {
    const call = (request: Buffer) => ({
      method: ParticipantService.prepare.path,
      request,
      metadata: new Metadata(),
      deadline: Date.now() + 5_000,
    });
    await assert.rejects(mux.invoke(call(GARBAGE)), (e: Error & { code?: number }) => {
      assert.equal(e.code, status.INVALID_ARGUMENT, e.message);
      return true;
    });
    assert.equal(handled.length, 0);
    const good = ParticipantService.prepare.requestSerialize({ xid: 'x', branchId: 'b', resource: '' });
    const res = ParticipantService.prepare.responseDeserialize((await mux.invoke(call(good))).response);
    assert.equal(res.vote, Vote.VOTE_READ_ONLY);
    assert.deepEqual(
      handled.map((r) => r.branchId),
      ['b'],
    );
  });
  it("a relayed 'not sent' text reads as the server's failure, so a call that ran is never retried as unsent", async () => {
    const unary = new UnaryTransport(server.address);
    try {
      const request = ParticipantService.commit.requestSerialize({
        xid: 'x',
        branchId: 'b',
        resource: '',
        onePhase: false,
      });
      for (const t of [unary, mux]) {
        const call = {
          method: ParticipantService.commit.path,
          request,
          metadata: new Metadata(),
          deadline: Date.now() + 5_000,
        };
        await assert.rejects(t.invoke(call), (e: DmtpError) => {
          assert.equal(e.code, status.UNAVAILABLE);
          assert.match(e.message, /the server's own call failed: No connection established/);
          assert.notEqual(e.details.notSent, true, `${t.kind}: it reached the server`);
          return true;
        });
      }
    } finally {
      unary.close();
    }
  });

  it('an UNAVAILABLE its handler answered reads as answered on both paths; one grpc-js made up does not', async () => {
    // Before, unary errors could not tell the two apart: outlier ejection counted a handler's own UNAVAILABLE
    // (passing on a dead dependency's failure) against a live instance, and a participant's own refusal made
    // the caller's transaction rollback-only as if the call's fate were unknown.
    const request = ParticipantService.commit.requestSerialize({
      xid: 'x',
      branchId: 'b',
      resource: '',
      onePhase: false,
    });
    const call = () => ({
      method: ParticipantService.commit.path,
      request,
      metadata: new Metadata(),
      deadline: Date.now() + 5_000,
    });
    const unary = new UnaryTransport(server.address);
    const dead = new UnaryTransport('127.0.0.1:1');
    try {
      for (const t of [unary, mux]) {
        await assert.rejects(t.invoke(call()), (e: DmtpError) => {
          assert.equal(e.code, status.UNAVAILABLE);
          assert.equal(answeredByServer(e), true, `${t.kind}: the server answered it`);
          return true;
        });
      }
      await assert.rejects(dead.invoke(call()), (e: DmtpError) => {
        assert.equal(e.code, status.UNAVAILABLE);
        assert.equal(answeredByServer(e), false, 'no server answered: the connection failed');
        return true;
      });
    } finally {
      unary.close();
      dead.close();
    }
  });
});
