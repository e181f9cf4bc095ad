import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { EtcdRegistry } from '../../../registry';
import { startServer } from '../../../rpc/server';
import { EchoService, echoHandlers } from '../../support/echo-service';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { plainLines, runCli } from './run-cli';

describe('dmtp services (real etcd)', function () {
  this.timeout(30_000);
  let registry: EtcdRegistry;
  let prefix: string;
  let service: string;

  beforeEach(async function () {
    const name = nameFor(this);
    prefix = `/dmtp-test/${name}`;
    service = `svc-${name}`.slice(0, 60);
    registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    await registry.register({
      service,
      instanceId: 'a-1',
      address: '127.0.0.1:7001',
      version: '1.2.0',
      zone: 'z1',
    });
    await registry.register({
      service,
      instanceId: 'b-2',
      address: '127.0.0.1:7002',
      metadata: { mux: '1' },
    });
    await registry.register({ service: 'other', instanceId: 'o-1', address: '127.0.0.1:7003' });
  });
  afterEach(async () => {
    await registry.close();
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    await etcd.delete().prefix(prefix);
    etcd.close();
  });

  it('--json lists every registered instance under the prefix; a name narrows it to one service', async () => {
    const all = await runCli(['services', '--prefix', prefix, '--json']);
    assert.equal(all.code, 0, all.stderr);
    const listed = JSON.parse(all.stdout) as { service: string; instanceId: string; address: string }[];
    assert.deepEqual(
      listed.map((i) => `${i.service}/${i.instanceId}@${i.address}`),
      ['other/o-1@127.0.0.1:7003', `${service}/a-1@127.0.0.1:7001`, `${service}/b-2@127.0.0.1:7002`],
    );

    const one = await runCli(['services', service, '--prefix', prefix]);
    assert.equal(one.code, 0, one.stderr);
    const [head, ...rows] = plainLines(one.stdout);
    assert.match(head, /^SERVICE +INSTANCE +ADDRESS +VERSION +ZONE +WEIGHT +UP +METADATA$/);
    assert.equal(rows.length, 2);
    assert.match(rows[0], new RegExp(`^${service} +a-1 +127\\.0\\.0\\.1:7001 +1\\.2\\.0 +z1 +1 +\\d+m?s`));
    assert.match(rows[1], /b-2 +127\.0\.0\.1:7002 +- +- +1 +\S+ +mux=1$/);
  });

  it('says so when nothing is registered (exit 0)', async () => {
    const r = await runCli(['services', 'nobody', '--prefix', prefix]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `no instances of 'nobody' under ${prefix}\n`);
    assert.deepEqual(
      JSON.parse((await runCli(['services', 'nobody', '--prefix', prefix, '--json'])).stdout),
      [],
    );
  });

  it("--health asks each instance's gRPC health check for its service", async () => {
    const health = `${service}-h`.slice(0, 60);
    const up = await startServer({
      registry,
      instance: { instanceId: 'up-1' },
      services: [{ name: health, definition: EchoService, handlers: echoHandlers('up') }],
      drainDelayMs: 0,
    });
    const draining = await startServer({
      registry,
      instance: { instanceId: 'draining-2' },
      services: [{ name: health, definition: EchoService, handlers: echoHandlers('d') }],
      drainDelayMs: 0,
    });
    draining.health.set(health, 'NOT_SERVING'); // health routing keeps it listed, with weight 0
    const bare = await startServer({ services: [], drainDelayMs: 0, health: false });
    await registry.register({ service: health, instanceId: 'bare-3', address: bare.address });
    await registry.register({ service: health, instanceId: 'gone-4', address: '127.0.0.1:1' });
    try {
      for (let i = 0; (await registry.lookup(health, 'draining-2'))?.weight !== 0; i++) {
        if (i > 200) assert.fail('draining-2 was not registered with weight 0');
        await new Promise((r) => setTimeout(r, 25));
      }
      const r = await runCli([
        'services',
        health,
        '--prefix',
        prefix,
        '--health',
        '--timeout',
        '2s',
        '--json',
      ]);
      assert.equal(r.code, 0, r.stderr);
      const listed = JSON.parse(r.stdout) as { instanceId: string; health: string; weight: number }[];
      assert.deepEqual(
        listed.map((i) => `${i.instanceId}=${i.health}/${i.weight}`),
        ['bare-3=UNIMPLEMENTED/1', 'draining-2=NOT_SERVING/0', 'gone-4=UNREACHABLE/1', 'up-1=SERVING/1'],
      );
      const table = await runCli(['services', health, '--prefix', prefix, '--health', '--timeout', '2s']);
      assert.match(plainLines(table.stdout)[0], /^SERVICE +INSTANCE +ADDRESS +HEALTH +VERSION/);
      assert.ok(plainLines(table.stdout).some((l) => /up-1 +127\.0\.0\.1:\d+ +SERVING /.test(l)));
    } finally {
      await Promise.all([up.stop(), draining.stop(), bare.stop()]);
    }
  });

  it('--health asks an HA ownership route as the coordinator it points at', async () => {
    // Before, a 'dmtp-coordinator-owner' row was asked under its own name, and a serving coordinator read NOT_FOUND.
    const coord = await startServer({
      services: [{ name: 'dmtp-coordinator', definition: EchoService, handlers: echoHandlers('c') }],
      drainDelayMs: 0,
    });
    await registry.register({ service: 'dmtp-coordinator-owner', instanceId: 'c9', address: coord.address });
    try {
      const r = await runCli([
        'services',
        'dmtp-coordinator-owner',
        '--prefix',
        prefix,
        '--health',
        '--json',
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(
        (JSON.parse(r.stdout) as { instanceId: string; health: string }[]).map(
          (i) => `${i.instanceId}=${i.health}`,
        ),
        ['c9=SERVING'],
      );
    } finally {
      await coord.stop();
    }
  });

  it('an unreachable etcd is one line on stderr and exit code 1, within seconds', async () => {
    const r = await runCli(['services', '--etcd', 'http://127.0.0.1:1', '--timeout', '2s']);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.deepEqual(plainLines(r.stderr), [
      'dmtp services: cannot reach etcd at http://127.0.0.1:1 (connect ECONNREFUSED 127.0.0.1:1)',
    ]);
    assert.ok(r.ms < 5_000, `took ${r.ms} ms`);
  });
});
