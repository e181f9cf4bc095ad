// `npm run demo -- --short` as CI runs it: scripts/demo.sh in a child process, pointed at the services that
// are already running (so it neither starts nor stops them), must end with every consistency check passed.
// The demo stops every process it started; this test waits for its exit.
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { Kafka, logLevel } from 'kafkajs';
import { DATABASE_URL, ETCD_ENDPOINTS, KAFKA_BROKERS } from '../../support/env';

const ROOT = path.resolve(__dirname, '..', '..', '..');

describe('npm run demo -- --short', function () {
  this.timeout(90_000);

  it('places orders, survives the kill -9 of an inventory instance, and passes every consistency check', async () => {
    const proc = spawn('bash', ['scripts/demo.sh', '--short'], {
      cwd: ROOT,
      env: {
        ...process.env,
        ETCD_ENDPOINTS: ETCD_ENDPOINTS.join(','),
        KAFKA_BROKERS: KAFKA_BROKERS.join(','),
        DATABASE_URL,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
    proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
    assert.equal(code, 0, `the demo failed:\n${out}`);
    assert.match(out, /^checks: (\d+)\/\1 passed$/m, out);
    assert.match(
      out,
      /^ {2}ok {4}each placed order is one trace across the services/m,
      'the tracing check ran',
    );
    assert.match(
      out,
      /^ {2}ok {4}the order service's own count of its transactions agrees/m,
      'the initiator metrics check ran',
    );
    assert.match(out, /kill -9 inventory-1/, 'an inventory instance was killed');
    assert.match(out, /inventory-1 started again/, 'and started again');
    assert.match(
      out,
      /orders {6}\d+: \d+ placed \(committed\), [1-9]\d* rejected/,
      'some orders fail by design',
    );
    assert.doesNotMatch(out, /services: (etcd|kafka|postgres) started/, 'it started none of the services');
    // Its own topics (events and dead letters) are deleted at the end, not left on the broker run after run.
    const run = /(demo-[a-z0-9]+)/.exec(out)?.[1];
    assert.ok(run, 'the run names its id');
    const admin = new Kafka({ brokers: KAFKA_BROKERS, logLevel: logLevel.NOTHING }).admin();
    await admin.connect();
    try {
      assert.deepEqual(
        (await admin.listTopics()).filter((t) => t.includes(run)),
        [],
      );
    } finally {
      await admin.disconnect();
    }
  });
});
