// A connection that goes silent without a reset (a frozen peer, a network that drops packets): real gRPC through
// a TCP relay in this process (test/support/tcp-relay.ts) that stops forwarding.
import { strict as assert } from 'node:assert';
import * as grpc from '@grpc/grpc-js';
import { DmtpError } from '../../../../common/errors';
import { MuxTransport } from '../../../../rpc/mux';
import { SLOW, startEchoServer, type EchoServer } from '../../../support/mux-echo';
import { tcpRelay, type TcpRelay } from '../../../support/tcp-relay';

describe('rpc/mux: keepalive on a connection that went silent', function () {
  this.timeout(30_000);
  let server: EchoServer;
  let link: TcpRelay;
  let t: MuxTransport;
  beforeEach(async () => {
    server = await startEchoServer();
    link = await tcpRelay(server.address);
  });
  afterEach(async () => {
    t?.close();
    link.close();
    await server.stop();
  });

  it('breaks the stream once a ping goes unanswered: calls fail UNAVAILABLE, not at their 60 s deadline', async () => {
    // Before, there was no keepalive: the stream stayed "up" and every call on it waited out its deadline.
    t = new MuxTransport({ address: link.address, keepaliveMs: 500, keepaliveTimeoutMs: 500 });
    const call = (ms: string) =>
      t.invoke({
        method: SLOW,
        request: Buffer.from(ms),
        metadata: new grpc.Metadata(),
        deadline: Date.now() + 60_000,
      });
    assert.equal((await call('1')).response.toString(), 'slow-done', 'the relay forwards');
    const pending = call('20000');
    link.freeze();
    const err = await pending.then(
      () => assert.fail('answered through a frozen connection'),
      (e: unknown) => e as DmtpError,
    );
    assert.equal(err.code, grpc.status.UNAVAILABLE, err.message);
  });
});
