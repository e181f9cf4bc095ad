/**
 * A two-phase transaction with mutual TLS on every gRPC hop: the initiator's business calls to two participants
 * (DMTP's client, found in etcd), its Commit to the coordinator, the coordinator's Prepare and Commit to the
 * participants. The coordinator runs on its etcd log; the participants keep their branches in file stores.
 * An initiator without a client certificate is refused by the coordinator.
 */
import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Etcd3 } from 'etcd3';
import { status } from '@grpc/grpc-js';
import { DmtpError } from '../../../common';
import { Coordinator } from '../../../coordinator';
import { EtcdRegistry } from '../../../registry';
import type { TlsOptions } from '../../../rpc';
import { createDmtp, type Dmtp } from '../../../txapi';
import { waitFor } from '../../support/coordinator-wait';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { startNoopParticipant, type NoopParticipant } from '../../support/noop-participant';
import { testPki } from '../../support/tls';

describe('a transaction with mutual TLS on every hop (real coordinator, etcd, openssl certificates)', function () {
  this.timeout(30_000);
  const pki = testPki();
  const tls: TlsOptions = { ca: pki.ca, cert: pki.cert, key: pki.key, requireClientCert: true };
  let dir: string;
  let prefix: string;
  let etcd: Etcd3;
  let registry: EtcdRegistry;
  let coord: Coordinator;
  const participants: NoopParticipant[] = [];
  const closers: { close(): void }[] = [];

  beforeEach(async function () {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), `${nameFor(this, 30)}-`));
    prefix = `/dmtp-test/${nameFor(this)}`;
    etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix, leaseTtlSeconds: 2 });
    coord = new Coordinator({ id: 'tls-coord', etcd: { endpoints: ETCD_ENDPOINTS, prefix }, tls });
    await coord.start();
  });
  afterEach(async () => {
    for (const c of closers.splice(0)) c.close();
    for (const n of participants.splice(0)) await n.stop();
    await coord.stop();
    await registry.close();
    await etcd.delete().prefix(prefix);
    etcd.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  /** A participant whose one method does nothing, on a resource that votes PREPARED, served over mutual TLS. */
  const participant = async (service: string) => {
    const n = await startNoopParticipant({ service, registry, dir, tls });
    participants.push(n);
    return n;
  };
  const initiator = (t: TlsOptions): Dmtp => {
    const d = createDmtp({ coordinator: { id: 'tls-coord', address: coord.address }, tls: t });
    closers.push(d);
    return d;
  };

  it('commits both branches over TLS; an initiator without a client certificate is refused', async () => {
    const [a, b] = [await participant('tls-a'), await participant('tls-b')];
    const dmtp = initiator(tls);
    const xid = await dmtp.transaction(async (tx) => {
      await a.c.noop(Buffer.from('a'));
      await b.c.noop(Buffer.from('b'));
      assert.equal(tx.branches.length, 2);
      return tx.xid;
    });
    for (const { p } of [a, b]) {
      const key = { xid, branchId: p.branchIdFor('noop') };
      await waitFor(
        `${p.config.service} committed`,
        async () => (await p.store.get(key))?.status === 'committed',
      );
    }
    assert.deepEqual(await dmtp.outcomeOf(xid), { status: 'committed' });

    const noCert = initiator({ ca: pki.ca });
    await assert.rejects(noCert.outcomeOf(xid), (err: unknown) => {
      assert.ok(err instanceof DmtpError, String(err));
      assert.equal(err.code, status.UNAVAILABLE, err.message);
      return true;
    });
  });
});
