// A connection that goes silent without a reset (a frozen peer, a network that drops packets): real gRPC through
// a TCP relay in this process that stops forwarding, so no FIN or RST ever reaches either side.
import { strict as assert } from 'node:assert';
import * as net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { DmtpError } from '../../../../common/errors';
import { MuxTransport } from '../../../../rpc/mux';
import { SLOW, startEchoServer, type EchoServer } from '../../../support/mux-echo';

/** Forwards bytes both ways until `freeze()`, then forwards nothing and closes nothing. */
async function relay(target: string): Promise<{ address: string; freeze(): void; close(): void }> {
  const [host, port] = [
    target.slice(0, target.lastIndexOf(':')),
    Number(target.slice(target.lastIndexOf(':') + 1)),
  ];
  let frozen = false;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
    }
    client.on('data', (b) => frozen || upstream.write(b));
    upstream.on('data', (b) => frozen || client.write(b));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    freeze: () => (frozen = true),
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

describe('rpc/mux: keepalive on a connection that went silent', function () {
  this.timeout(30_000);
  let server: EchoServer;
  let link: Awaited<ReturnType<typeof relay>>;
  let t: MuxTransport;
  beforeEach(async () => {
    server = await startEchoServer();
    link = await relay(server.address);
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
