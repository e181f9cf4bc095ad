// AddressTransports against a real server (the mux echo server, in this process): what sends a call to unary.
import { strict as assert } from 'node:assert';
import { Metadata } from '@grpc/grpc-js';
import { AddressTransports } from '../../../rpc/address-transports';
import { ECHO, startEchoServer, UNIMPL, type EchoServer } from '../../support/mux-echo';

describe('rpc AddressTransports (real server)', () => {
  let server: EchoServer;
  let t: AddressTransports;
  beforeEach(async () => {
    server = await startEchoServer();
    t = new AddressTransports();
  });
  afterEach(async () => {
    t.close();
    await server.stop();
  });

  const call = (method: string) =>
    t.invoke(server.address, {
      method,
      request: Buffer.from('x'),
      metadata: new Metadata(),
      deadline: Date.now() + 5_000,
    });

  it("a handler's own UNIMPLEMENTED is its answer: not sent again over unary, the address stays on the stream", async () => {
    // Before, any error whose text said UNIMPLEMENTED was taken for a server without the multiplexed path: the
    // call that had run was sent again over unary, and the address used unary for good.
    await assert.rejects(call(UNIMPL), (e: Error & { code?: number }) => {
      assert.equal(e.code, 12);
      assert.match(e.message, /this plan does not include exports/);
      return true;
    });
    assert.deepEqual(t.paths(), { [server.address]: 'mux' });
    assert.equal((await call(ECHO)).response.toString(), 'x');
  });
});
