/**
 * The CLI's TLS, from the environment (DMTP_TLS_CA, DMTP_TLS_CERT, DMTP_TLS_KEY, DMTP_TLS_REQUIRE_CLIENT_CERT,
 * DMTP_TLS_SERVER_NAME; see rpc/tls.ts): `dmtp coordinator` serves with it, `dmtp tx` and `dmtp services --health`
 * call with it. A file that cannot be read is one line on stderr, as any CLI failure.
 */
import { InvalidArgumentError } from '../common/errors';
import { tlsFromEnv, type TlsOptions } from '../rpc/tls';
import { CliError } from './errors';

export function envTls(): TlsOptions | undefined {
  try {
    return tlsFromEnv();
  } catch (err) {
    if (err instanceof InvalidArgumentError) throw new CliError(`${err.message} (from DMTP_TLS_*)`);
    throw err;
  }
}
