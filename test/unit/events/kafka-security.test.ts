/**
 * Kafka's TLS and SASL from DMTP_KAFKA_*: PEM files read, half-given settings refused with the variable named,
 * and what logs show of them (never a key or a password). Files from the test PKI (openssl); nothing connects.
 */
import { strict as assert } from 'node:assert';
import { kafkaSecurityFromEnv, loggableClientOptions } from '../../../events/client';
import { refusedOption as refused } from '../../support/refused';
import { testPki } from '../../support/tls';

describe('Kafka security from DMTP_KAFKA_*', () => {
  const pki = testPki();

  it('nothing set: plaintext, no SASL; DMTP_KAFKA_TLS alone: TLS with the system roots', () => {
    assert.deepEqual(kafkaSecurityFromEnv({}), { ssl: undefined });
    assert.deepEqual(kafkaSecurityFromEnv({ DMTP_KAFKA_TLS: 'on' }), { ssl: true });
  });

  it('reads the CA, a client certificate and key, and SASL; logs show TLS on and the mechanism only', () => {
    const s = kafkaSecurityFromEnv({
      DMTP_KAFKA_CA: pki.files.ca,
      DMTP_KAFKA_CERT: pki.files.cert,
      DMTP_KAFKA_KEY: pki.files.key,
      DMTP_KAFKA_SASL_MECHANISM: 'SCRAM-SHA-512',
      DMTP_KAFKA_USER: 'dmtp',
      DMTP_KAFKA_PASSWORD: 's3cret',
    });
    assert.deepEqual(s, {
      ssl: { ca: pki.ca, cert: pki.cert, key: pki.key },
      sasl: { mechanism: 'scram-sha-512', username: 'dmtp', password: 's3cret' },
    });
    const logged = loggableClientOptions({ brokers: ['b:9093'], ...s });
    assert.deepEqual(logged, { brokers: ['b:9093'], ssl: 'on', sasl: 'scram-sha-512' });
    assert.ok(!JSON.stringify(logged).includes('s3cret'));
  });

  it('refuses half a key pair, an unknown mechanism, a mechanism without its user, a user without a mechanism', () => {
    assert.throws(
      () => kafkaSecurityFromEnv({ DMTP_KAFKA_CERT: pki.files.cert }),
      refused('DMTP_KAFKA_KEY', /go together/),
    );
    assert.throws(
      () =>
        kafkaSecurityFromEnv({
          DMTP_KAFKA_SASL_MECHANISM: 'gssapi',
          DMTP_KAFKA_USER: 'u',
          DMTP_KAFKA_PASSWORD: 'p',
        }),
      refused('DMTP_KAFKA_SASL_MECHANISM', /plain, scram-sha-256 or scram-sha-512, not 'gssapi'/),
    );
    assert.throws(
      () => kafkaSecurityFromEnv({ DMTP_KAFKA_SASL_MECHANISM: 'plain', DMTP_KAFKA_USER: 'u' }),
      refused('DMTP_KAFKA_PASSWORD', /needs DMTP_KAFKA_USER and DMTP_KAFKA_PASSWORD/),
    );
    assert.throws(
      () => kafkaSecurityFromEnv({ DMTP_KAFKA_USER: 'u', DMTP_KAFKA_PASSWORD: 'p' }),
      refused('DMTP_KAFKA_SASL_MECHANISM', /need DMTP_KAFKA_SASL_MECHANISM/),
    );
    assert.throws(
      () => kafkaSecurityFromEnv({ DMTP_KAFKA_TLS: 'maybe' }),
      refused('DMTP_KAFKA_TLS', /not 'maybe'/),
    );
    assert.throws(
      () => kafkaSecurityFromEnv({ DMTP_KAFKA_CA: '/nonexistent/kafka-ca.pem' }),
      refused('DMTP_KAFKA_CA', /cannot read \/nonexistent\/kafka-ca\.pem/),
    );
  });
});
