/**
 * TLS on DMTP's gRPC, over real sockets with certificates from the machine's openssl (test/support/tls.ts):
 * servers found in etcd, DMTP's client on both paths (the multiplexed stream and plain unary), the health
 * check; mutual TLS; and the refusals — a plaintext peer, a server signed by a CA nobody trusts, a client
 * without a certificate where one is required — each a prompt UNAVAILABLE, never a hang.
 */
import { strict as assert } from 'node:assert';
import { Metadata, status } from '@grpc/grpc-js';
import { EtcdRegistry } from '../../../registry';
import {
  checkHealth,
  client,
  startServer,
  UnaryTransport,
  type ClientOptions,
  type RpcServer,
  type TlsOptions,
} from '../../../rpc';
import { DmtpError } from '../../../common';
import { EchoService, echoHandlers } from '../../support/echo-service';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { testPki } from '../../support/tls';

describe('rpc over TLS (real sockets, etcd, openssl certificates)', function () {
  this.timeout(20_000);
  const pki = testPki();
  const serverTls: TlsOptions = { cert: pki.cert, key: pki.key };
  const mutualTls: TlsOptions = { ca: pki.ca, cert: pki.cert, key: pki.key, requireClientCert: true };
  let registry: EtcdRegistry;
  let service: string;
  let server: RpcServer | undefined;
  const clients: { close(): void }[] = [];

  beforeEach(function () {
    service = nameFor(this, 40);
    registry = new EtcdRegistry({
      hosts: ETCD_ENDPOINTS,
      prefix: `/dmtp-test/${service}`,
      leaseTtlSeconds: 2,
    });
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await server?.stop();
    server = undefined;
    await registry.close();
  });

  const serve = async (tls: TlsOptions | undefined) => {
    server = await startServer({
      registry,
      tls,
      services: [{ name: service, definition: EchoService, handlers: echoHandlers('tls-echo') }],
      drainDelayMs: 0,
      gracePeriodMs: 500,
    });
    return server;
  };
  const echoClient = (options: ClientOptions) => {
    const c = client(registry, service, EchoService, { timeoutMs: 3_000, maxAttempts: 1, ...options });
    clients.push(c);
    return c;
  };
  const unavailable = (err: unknown) => {
    assert.ok(err instanceof DmtpError, String(err));
    assert.equal(err.code, status.UNAVAILABLE, err.message);
    return true;
  };

  it('serves calls over TLS on the multiplexed path and unary; the health check asks over TLS too', async () => {
    const s = await serve(serverTls);
    const c = echoClient({ tls: { ca: pki.ca } });
    assert.equal((await c.echo(Buffer.from('over the stream'))).toString(), 'over the stream');
    // Unary to the same server (the path non-DMTP clients take, and DMTP's for large payloads).
    const unary = new UnaryTransport(s.address, { tls: { ca: pki.ca } });
    clients.push(unary);
    const res = await unary.invoke({
      method: EchoService.echo.path,
      request: Buffer.from('unary'),
      metadata: new Metadata(),
      deadline: Date.now() + 3_000,
    });
    assert.equal(res.response.toString(), 'unary');
    assert.equal(await checkHealth(s.address, service, 2_000, { ca: pki.ca }), 'SERVING');
    assert.equal(await checkHealth(s.address, service, 2_000), 'UNREACHABLE', 'plaintext health check');
  });

  it('refuses a plaintext client, and a client refuses a server its CA did not sign', async () => {
    await serve(serverTls);
    const started = Date.now();
    await assert.rejects(echoClient({}).echo(Buffer.from('x')), unavailable);
    await assert.rejects(echoClient({ tls: { ca: pki.rogue.ca } }).echo(Buffer.from('x')), unavailable);
    assert.ok(Date.now() - started < 8_000, `refused in ${Date.now() - started} ms`);
  });

  it('mutual TLS: a client without a certificate, or with one another CA signed, is refused', async () => {
    await serve(mutualTls);
    assert.equal(
      (await echoClient({ tls: mutualTls }).echo(Buffer.from('both ways'))).toString(),
      'both ways',
    );
    await assert.rejects(echoClient({ tls: { ca: pki.ca } }).echo(Buffer.from('x')), unavailable);
    await assert.rejects(
      echoClient({ tls: { ca: pki.ca, cert: pki.rogue.cert, key: pki.rogue.key } }).echo(Buffer.from('x')),
      unavailable,
    );
  });

  it('a TLS client refuses a plaintext server', async () => {
    await serve(undefined);
    await assert.rejects(echoClient({ tls: { ca: pki.ca } }).echo(Buffer.from('x')), unavailable);
  });
});
