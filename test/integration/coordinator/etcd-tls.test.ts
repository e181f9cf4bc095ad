/**
 * etcd over TLS with client certificates (an etcd of this file's own, `--client-cert-auth`, certificates from the
 * machine's openssl): the registry, the coordinator's log, HA lock and registration, and the CLI's reads
 * (DMTP_ETCD_*) all reach it with their certificates; without them the CLI says it cannot reach etcd.
 */
import { strict as assert } from 'node:assert';
import { Coordinator } from '../../../coordinator';
import { EtcdRegistry } from '../../../registry';
import { TxState } from '../../../proto/gen/dmtp/v1/types';
import { mintXid } from '../../../common';
import { coordinatorClient } from '../../support/coordinator-client';
import { OwnEtcd } from '../../support/own-etcd';
import { testPki } from '../../support/tls';
import { waitFor } from '../../support/coordinator-wait';
import { collect, plainLines, runCli, startCli } from '../bin/run-cli';

describe('etcd over TLS with client certificates (its own etcd)', function () {
  this.timeout(60_000);
  const pki = testPki();
  const credentials = { rootCertificate: pki.ca, certChain: pki.cert, privateKey: pki.key };
  const etcd = new OwnEtcd('tls', 23891, 23991, pki.files);
  const prefix = '/dmtp-tls';

  before(() => etcd.start());
  after(() => etcd.destroy());

  it('the registry, the coordinator (log, HA, registration) and the CLI reach it with their certificates', async () => {
    const registry = new EtcdRegistry({ hosts: [etcd.endpoint], prefix, credentials, leaseTtlSeconds: 2 });
    const coord = new Coordinator({
      id: 'etcd-tls',
      etcd: { endpoints: [etcd.endpoint], prefix, credentials },
      registry: true,
    });
    const address = await coord.start();
    const client = coordinatorClient(address);
    try {
      const instances = await registry.instances('dmtp-coordinator');
      assert.deepEqual(
        instances.map((i) => [i.instanceId, i.address]),
        [['etcd-tls', address]],
      );
      // A commit decided and logged in the TLS etcd.
      const res = await client.commit({ xid: mintXid('etcd-tls'), branches: [] });
      assert.equal(res.state, TxState.TX_STATE_COMMITTED);

      const env = {
        DMTP_ETCD_CA: pki.files.ca,
        DMTP_ETCD_CERT: pki.files.cert,
        DMTP_ETCD_KEY: pki.files.key,
      };
      const listed = await runCli(
        ['services', 'dmtp-coordinator', '--etcd', etcd.endpoint, '--prefix', prefix, '--json'],
        env,
      );
      assert.equal(listed.code, 0, listed.stderr);
      assert.deepEqual(
        (JSON.parse(listed.stdout) as { instanceId: string }[]).map((i) => i.instanceId),
        ['etcd-tls'],
      );
      // `dmtp coordinator` on the same etcd, with DMTP_ETCD_*: both coordinators registered.
      const child = startCli(
        ['coordinator', '--json', '--id', 'cli-etcd-tls', '--etcd', etcd.endpoint, '--prefix', prefix],
        { ...env, DMTP_LOG_LEVEL: 'warn' },
      );
      const exited = collect(child);
      let out = '';
      child.stdout!.on('data', (d) => (out += d));
      try {
        await waitFor(
          'the CLI coordinator registered',
          async () => {
            const ids = (await registry.instances('dmtp-coordinator')).map((i) => i.instanceId).sort();
            return ids.join(',') === 'cli-etcd-tls,etcd-tls';
          },
          20_000,
        );
        await waitFor('its ready line', () => out.includes('\n'));
        assert.equal(JSON.parse(out.split('\n')[0]).ready, true);
      } finally {
        child.kill('SIGTERM');
      }
      assert.equal((await exited).code, 0);

      const refused = await runCli([
        ...['services', 'dmtp-coordinator', '--etcd', etcd.endpoint, '--prefix', prefix],
        ...['--timeout', '2s'],
      ]);
      assert.equal(refused.code, 1);
      assert.match(
        plainLines(refused.stderr).join('\n'),
        /^dmtp services: cannot reach etcd at https:\/\/127\.0\.0\.1:23891/,
      );
      const halfKey = await runCli(['services', '--etcd', etcd.endpoint], { DMTP_ETCD_CERT: pki.files.cert });
      assert.deepEqual(plainLines(halfKey.stderr), [
        'dmtp services: DMTP_ETCD_CERT and DMTP_ETCD_KEY go together (one is missing)',
      ]);
    } finally {
      client.close();
      await coord.stop();
      await registry.close();
    }
  });
});
