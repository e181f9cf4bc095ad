/**
 * etcd's TLS and user from DMTP_ETCD_*: read from PEM files, refused half-given with the variable named, and
 * described for logs without a key or a password. The files are the test PKI's (made by openssl); nothing
 * connects.
 */
import { strict as assert } from 'node:assert';
import { describeEtcdSecurity, etcdSecurityFromEnv } from '../../../registry';
import { refusedOption as refused } from '../../support/refused';
import { testPki } from '../../support/tls';

describe('etcd security from DMTP_ETCD_*', () => {
  const pki = testPki();

  it('nothing set: plaintext, no user', () => {
    assert.deepEqual(etcdSecurityFromEnv({}), { credentials: undefined, auth: undefined });
    assert.deepEqual(describeEtcdSecurity({}), { tls: 'off', user: undefined });
  });

  it('reads the CA, the client certificate and key, and the user; logs say only what is on', () => {
    const s = etcdSecurityFromEnv({
      DMTP_ETCD_CA: pki.files.ca,
      DMTP_ETCD_CERT: pki.files.cert,
      DMTP_ETCD_KEY: pki.files.key,
      DMTP_ETCD_USER: 'dmtp',
      DMTP_ETCD_PASSWORD: 's3cret',
    });
    assert.deepEqual(s, {
      credentials: { rootCertificate: pki.ca, certChain: pki.cert, privateKey: pki.key },
      auth: { username: 'dmtp', password: 's3cret' },
    });
    const described = describeEtcdSecurity(s);
    assert.deepEqual(described, { tls: 'mutual', user: 'dmtp' });
    assert.ok(!JSON.stringify(described).includes('s3cret'));
    assert.deepEqual(describeEtcdSecurity(etcdSecurityFromEnv({ DMTP_ETCD_CA: pki.files.ca })), {
      tls: 'on',
      user: undefined,
    });
  });

  it('refuses half a key pair, a client certificate without the CA, a user without a password, an unreadable file', () => {
    assert.throws(
      () => etcdSecurityFromEnv({ DMTP_ETCD_CA: pki.files.ca, DMTP_ETCD_CERT: pki.files.cert }),
      refused('DMTP_ETCD_KEY', /go together/),
    );
    assert.throws(
      () => etcdSecurityFromEnv({ DMTP_ETCD_CERT: pki.files.cert, DMTP_ETCD_KEY: pki.files.key }),
      refused('DMTP_ETCD_CA', /needs DMTP_ETCD_CA/),
    );
    assert.throws(
      () => etcdSecurityFromEnv({ DMTP_ETCD_USER: 'dmtp' }),
      refused('DMTP_ETCD_PASSWORD', /go together/),
    );
    assert.throws(
      () => etcdSecurityFromEnv({ DMTP_ETCD_CA: '/nonexistent/etcd-ca.pem' }),
      refused('DMTP_ETCD_CA', /DMTP_ETCD_CA: cannot read \/nonexistent\/etcd-ca\.pem/),
    );
  });
});
