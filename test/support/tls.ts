/**
 * Certificates for the TLS tests, made with the machine's openssl once per test process in a temporary folder
 * (removed at exit): a test CA and a "node" certificate it signed for 127.0.0.1/localhost, usable as a server's
 * and as a client's (as a service mesh hands one certificate to each process); and a second, unrelated CA with
 * a node certificate of its own (a peer nobody should trust).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface TestPki {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  /** The files of the above (for readTlsFiles and DMTP_TLS_*). */
  files: { ca: string; cert: string; key: string };
  /** Another CA's node certificate: signed, but not by `ca`. */
  rogue: { ca: Buffer; cert: Buffer; key: Buffer };
}

let made: TestPki | undefined;

function openssl(dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

function authority(dir: string, name: string): { ca: string; cert: string; key: string } {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(
    dir,
    ['req', '-x509', ...ec, '-keyout', `${name}-ca.key`, '-out', `${name}-ca.crt`].concat([
      '-days',
      '2',
      '-subj',
      `/CN=dmtp-test-${name}-ca`,
    ]),
  );
  openssl(dir, ['req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', '/CN=localhost']);
  writeFileSync(
    path.join(dir, `${name}.ext`),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n',
  );
  openssl(
    dir,
    ['x509', '-req', '-in', `${name}.csr`, '-CA', `${name}-ca.crt`, '-CAkey', `${name}-ca.key`].concat([
      '-CAcreateserial',
      '-out',
      `${name}.crt`,
      '-days',
      '2',
      '-extfile',
      `${name}.ext`,
    ]),
  );
  return {
    ca: path.join(dir, `${name}-ca.crt`),
    cert: path.join(dir, `${name}.crt`),
    key: path.join(dir, `${name}.key`),
  };
}

/** The test PKI (made on first use). */
export function testPki(): TestPki {
  if (made) return made;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dmtp-tls-'));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  const files = authority(dir, 'node');
  const rogue = authority(dir, 'rogue');
  const read = (f: { ca: string; cert: string; key: string }) => ({
    ca: readFileSync(f.ca),
    cert: readFileSync(f.cert),
    key: readFileSync(f.key),
  });
  made = { ...read(files), files, rogue: read(rogue) };
  return made;
}

/** DMTP_TLS_* naming the test PKI's files, for mutual TLS (what `dmtp` and the coordinator's main read). */
export function tlsEnv(pki: TestPki = testPki()): Record<string, string> {
  return {
    DMTP_TLS_CA: pki.files.ca,
    DMTP_TLS_CERT: pki.files.cert,
    DMTP_TLS_KEY: pki.files.key,
    DMTP_TLS_REQUIRE_CLIENT_CERT: '1',
  };
}
