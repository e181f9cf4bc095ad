/**
 * TLS for every gRPC connection DMTP makes or accepts: one `TlsOptions` per process, used on both sides, since
 * a DMTP process is usually a server and a client at once (a participant serves calls and asks its coordinator
 * for outcomes; a coordinator serves Commit and calls participants).
 *
 * - As a server: presents `cert`/`key`; with `requireClientCert`, accepts only clients whose certificate `ca`
 *   signed (mutual TLS).
 * - As a client: trusts servers whose certificate `ca` signed (the system's roots without `ca`), and presents
 *   `cert`/`key` when given (mutual TLS). `serverName` is the name checked in the server's certificate when the
 *   address dialled is not in it (e.g. an IP address registered in etcd, a certificate naming the service).
 *
 * Certificates and keys are PEM contents (a Buffer or a string), not paths: `readTlsFiles` reads files. Off by
 * default (plaintext), as grpc-js is; a TLS server refuses plaintext clients and the other way round.
 */
import { ChannelCredentials, credentials, ServerCredentials, type ChannelOptions } from '@grpc/grpc-js';
import { InvalidArgumentError } from '../common/errors';
import { flagFromEnv, readFileOption } from '../common/options';

export interface TlsOptions {
  /** PEM of the certificate authorities that sign the peers' certificates. */
  ca?: Buffer | string;
  /** PEM certificate chain this process presents (a server must have one; a client for mutual TLS). */
  cert?: Buffer | string;
  /** PEM private key of `cert`. */
  key?: Buffer | string;
  /** Server: refuse clients without a certificate signed by `ca` (mutual TLS). Needs `ca`. */
  requireClientCert?: boolean;
  /** Client: the name to check in servers' certificates instead of the host dialled. */
  serverName?: string;
}

/** What a client channel needs for `tls`: its credentials and the channel options that go with them. */
export interface ClientTls {
  credentials: ChannelCredentials;
  channelOptions: ChannelOptions;
}

const PEM = /-----BEGIN [A-Z0-9 ]+-----/;

function pem(owner: string, name: string, value: Buffer | string | undefined): Buffer | undefined {
  if (value === undefined) return undefined;
  const buf = typeof value === 'string' ? Buffer.from(value) : value;
  if (!Buffer.isBuffer(buf) || !PEM.test(buf.toString('latin1'))) {
    throw new InvalidArgumentError(
      `${owner}: tls.${name} is not PEM (pass the file's contents, e.g. readTlsFiles({ ${name}: path }), not its path)`,
      { details: { option: `tls.${name}` } },
    );
  }
  return buf;
}

/** Checks `tls` (InvalidArgumentError naming the option) and returns its PEM values as Buffers. */
export function checkTls(owner: string, tls: TlsOptions): { ca?: Buffer; cert?: Buffer; key?: Buffer } {
  const ca = pem(owner, 'ca', tls.ca);
  const cert = pem(owner, 'cert', tls.cert);
  const key = pem(owner, 'key', tls.key);
  if ((cert === undefined) !== (key === undefined)) {
    throw new InvalidArgumentError(`${owner}: tls.cert and tls.key go together (one is missing)`, {
      details: { option: cert ? 'tls.key' : 'tls.cert' },
    });
  }
  if (tls.requireClientCert && !ca) {
    throw new InvalidArgumentError(
      `${owner}: tls.requireClientCert needs tls.ca (the authority that signs clients' certificates)`,
      { details: { option: 'tls.ca' } },
    );
  }
  if (tls.serverName !== undefined && (typeof tls.serverName !== 'string' || tls.serverName === '')) {
    throw new InvalidArgumentError(`${owner}: tls.serverName must be a host name`, {
      details: { option: 'tls.serverName' },
    });
  }
  return { ca, cert, key };
}

/** A server's credentials: insecure without `tls`; with it, its certificate (and client checks when asked). */
export function serverCredentials(owner: string, tls: TlsOptions | undefined): ServerCredentials {
  if (!tls) return ServerCredentials.createInsecure();
  const { ca, cert, key } = checkTls(owner, tls);
  if (!cert || !key) {
    throw new InvalidArgumentError(`${owner}: a TLS server needs tls.cert and tls.key`, {
      details: { option: 'tls.cert' },
    });
  }
  return ServerCredentials.createSsl(
    ca ?? null,
    [{ cert_chain: cert, private_key: key }],
    tls.requireClientCert === true,
  );
}

/** A client channel's credentials and options: insecure without `tls`. */
export function clientTls(owner: string, tls: TlsOptions | undefined): ClientTls {
  if (!tls) return { credentials: credentials.createInsecure(), channelOptions: {} };
  const { ca, cert, key } = checkTls(owner, tls);
  return {
    credentials: credentials.createSsl(ca ?? null, key ?? null, cert ?? null),
    channelOptions: tls.serverName ? { 'grpc.ssl_target_name_override': tls.serverName } : {},
  };
}

/** `TlsOptions` with the PEM files at these paths read (synchronously, at start-up). */
export function readTlsFiles(paths: {
  ca?: string;
  cert?: string;
  key?: string;
  requireClientCert?: boolean;
  serverName?: string;
}): TlsOptions {
  return {
    ca: readFileOption('tls.ca', paths.ca),
    cert: readFileOption('tls.cert', paths.cert),
    key: readFileOption('tls.key', paths.key),
    requireClientCert: paths.requireClientCert,
    serverName: paths.serverName,
  };
}

/**
 * `TlsOptions` from the environment, or undefined when none is set: DMTP_TLS_CA, DMTP_TLS_CERT, DMTP_TLS_KEY
 * (file paths), DMTP_TLS_REQUIRE_CLIENT_CERT (`1`/`true`/`yes`/`on`, or off), DMTP_TLS_SERVER_NAME. Used by `dmtp` and the
 * coordinator's main.
 */
export function tlsFromEnv(env: NodeJS.ProcessEnv = process.env): TlsOptions | undefined {
  const { DMTP_TLS_CA: ca, DMTP_TLS_CERT: cert, DMTP_TLS_KEY: key } = env;
  const serverName = env.DMTP_TLS_SERVER_NAME || undefined;
  const require = flagFromEnv(env, 'DMTP_TLS_REQUIRE_CLIENT_CERT');
  if (!ca && !cert && !key && !serverName && !require) return undefined;
  return readTlsFiles({
    ca: ca || undefined,
    cert: cert || undefined,
    key: key || undefined,
    requireClientCert: require || undefined,
    serverName,
  });
}
