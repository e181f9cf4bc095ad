/**
 * The CLI's TLS, from the environment (DMTP_TLS_CA, DMTP_TLS_CERT, DMTP_TLS_KEY, DMTP_TLS_REQUIRE_CLIENT_CERT,
 * DMTP_TLS_SERVER_NAME; see rpc/tls.ts): `dmtp coordinator` serves with it, `dmtp tx` and `dmtp services --health`
 * call with it. And its etcd's (DMTP_ETCD_CA, DMTP_ETCD_CERT, DMTP_ETCD_KEY, DMTP_ETCD_USER, DMTP_ETCD_PASSWORD;
 * see registry/etcd-channel.ts), for every command that reads etcd; and Kafka's (DMTP_KAFKA_*, see
 * events/client.ts) for the `events` commands and the coordinator's relay. A file that cannot be read is one line
 * on stderr, as any CLI failure.
 */
import { InvalidArgumentError } from '../common/errors';
import { tlsFromEnv, type TlsOptions } from '../rpc/tls';
import { etcdSecurityFromEnv, type EtcdSecurity } from '../registry/etcd-channel';
import { kafkaSecurityFromEnv, type KafkaClientOptions } from '../events/client';
import { CliError } from './errors';

export function envTls(): TlsOptions | undefined {
  try {
    return tlsFromEnv();
  } catch (err) {
    if (err instanceof InvalidArgumentError) throw new CliError(`${err.message} (from DMTP_TLS_*)`);
    throw err;
  }
}

export function envEtcdSecurity(): EtcdSecurity {
  try {
    return etcdSecurityFromEnv();
  } catch (err) {
    if (err instanceof InvalidArgumentError) throw new CliError(err.message);
    throw err;
  }
}

/**
 * Node warns (DEP0123) when TLS is dialled to an IP address — grpc-js passes the host as the server name, and the
 * registry's addresses are IPs — which would break the CLI's one-line errors on stderr. The certificate is still
 * checked against the IP (its subjectAltName); only that warning is dropped, in the CLI's process only.
 */
export function quietIpServerNameWarning(): void {
  const emit = process.emitWarning.bind(process) as (...args: unknown[]) => void;
  process.emitWarning = ((...args: unknown[]) => {
    const [, type, code] = args;
    const c = typeof type === 'object' && type !== null ? (type as { code?: unknown }).code : code;
    if (c === 'DEP0123') return;
    emit(...args);
  }) as typeof process.emitWarning;
}

export function envKafkaSecurity(): Pick<KafkaClientOptions, 'ssl' | 'sasl'> {
  try {
    return kafkaSecurityFromEnv();
  } catch (err) {
    if (err instanceof InvalidArgumentError) throw new CliError(err.message);
    throw err;
  }
}
