/**
 * TLS options are checked where they are given, with errors naming the option: PEM contents rather than paths,
 * a certificate with its key, mutual TLS with a CA, a server with a certificate. No connection is made; the
 * certificates are the test PKI's (made by openssl). The registry is the in-memory one (no etcd needed here).
 */
import { strict as assert } from 'node:assert';
import { InvalidArgumentError } from '../../../common';
import { Coordinator, MemoryTxLog } from '../../../coordinator';
import { MemoryRegistry } from '../../../registry';
import {
  clientTls,
  client,
  readTlsFiles,
  serverCredentials,
  startServer,
  tlsFromEnv,
  type TlsOptions,
} from '../../../rpc';
import { createDmtp } from '../../../txapi';
import { EchoService } from '../../support/echo-service';
import { refusedOption as refused } from '../../support/refused';
import { testPki } from '../../support/tls';

describe('rpc TLS options', () => {
  const pki = testPki();

  it('takes PEM contents, and names the option given a path instead', () => {
    assert.doesNotThrow(() => clientTls('t', { ca: pki.ca }));
    assert.doesNotThrow(() => clientTls('t', { ca: pki.ca.toString() }));
    assert.throws(() => clientTls('t', { ca: pki.files.ca }), refused('tls.ca', /tls\.ca is not PEM/));
    assert.throws(
      () => serverCredentials('s', { cert: pki.cert, key: '/etc/key.pem' }),
      refused('tls.key', /not its path/),
    );
  });

  it('refuses half a key pair, mutual TLS without a CA, a server without a certificate, an empty name', () => {
    assert.throws(() => clientTls('t', { cert: pki.cert }), refused('tls.key', /go together/));
    assert.throws(() => clientTls('t', { key: pki.key }), refused('tls.cert', /go together/));
    assert.throws(
      () => serverCredentials('s', { cert: pki.cert, key: pki.key, requireClientCert: true }),
      refused('tls.ca', /requireClientCert needs tls\.ca/),
    );
    assert.throws(() => serverCredentials('s', { ca: pki.ca }), refused('tls.cert', /TLS server needs/));
    assert.throws(() => clientTls('t', { ca: pki.ca, serverName: '' }), refused('tls.serverName', /host/));
  });

  it('is checked when a server, a client, a coordinator or an initiator is made, not at the first call', async () => {
    const bad: TlsOptions = { ca: 'ca.pem' };
    await assert.rejects(
      async () => startServer({ services: [], tls: { cert: pki.cert, key: 'key.pem' } }),
      refused('tls.key', /server: tls\.key is not PEM/),
    );
    const registry = new MemoryRegistry();
    assert.throws(
      () => client(registry, 'echo', EchoService, { tls: bad }),
      refused('tls.ca', /client of echo: tls\.ca/),
    );
    assert.throws(
      () => new Coordinator({ id: 'c', log: new MemoryTxLog({ unsafeForTests: true }), tls: bad }),
      refused('tls.ca', /coordinator: tls\.ca/),
    );
    assert.throws(
      () => createDmtp({ coordinator: { id: 'c', address: '127.0.0.1:1' }, tls: bad }),
      refused('tls.ca', /tls\.ca/),
    );
    await registry.close();
  });

  it('reads PEM files, from paths or DMTP_TLS_*; an unreadable file names its path', () => {
    const read = readTlsFiles({ ca: pki.files.ca, cert: pki.files.cert, key: pki.files.key });
    assert.deepEqual([read.ca, read.cert, read.key], [pki.ca, pki.cert, pki.key]);
    assert.equal(tlsFromEnv({}), undefined, 'nothing set: plaintext');
    const env = tlsFromEnv({
      DMTP_TLS_CA: pki.files.ca,
      DMTP_TLS_CERT: pki.files.cert,
      DMTP_TLS_KEY: pki.files.key,
      DMTP_TLS_REQUIRE_CLIENT_CERT: 'true',
      DMTP_TLS_SERVER_NAME: 'localhost',
    });
    assert.deepEqual(env, { ...read, requireClientCert: true, serverName: 'localhost' });
    assert.doesNotThrow(() => serverCredentials('s', env));
    assert.throws(
      () => tlsFromEnv({ DMTP_TLS_CA: pki.files.ca, DMTP_TLS_REQUIRE_CLIENT_CERT: 'maybe' }),
      refused('DMTP_TLS_REQUIRE_CLIENT_CERT', /must be 1\/true\/yes\/on or 0\/false\/no\/off, not 'maybe'/),
    );
    assert.throws(
      () => tlsFromEnv({ DMTP_TLS_CA: '/nonexistent/ca.pem' }),
      (err: unknown) =>
        err instanceof InvalidArgumentError &&
        /tls\.ca: cannot read \/nonexistent\/ca\.pem/.test(err.message) &&
        (err.details as { path: string }).path === '/nonexistent/ca.pem',
    );
  });
});
