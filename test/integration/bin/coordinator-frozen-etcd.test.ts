// A coordinator started against an etcd that takes connections but never answers (the process stopped with
// SIGSTOP: the kernel still accepts, nothing replies). Before, `dmtp coordinator` and coordinator/main.ts waited in
// start() for good — the lease grant had no deadline — and took no Ctrl-C until start returned. Now every unary
// etcd call of the coordinator has the log's request timeout, and a signal during start ends the start.
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { OwnEtcd } from '../../support/own-etcd';
import { cliEnv, collect, plainLines, startCli } from './run-cli';

/** Resolves once the child logged that its start began (it is then waiting on etcd). */
function starting(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    let seen = '';
    const look = (d: Buffer) => {
      seen += d;
      if (seen.includes('"msg":"coordinator starting"')) {
        child.stderr!.off('data', look);
        resolve();
      }
    };
    child.stderr!.on('data', look);
  });
}

const MAIN = path.resolve(__dirname, '../../../coordinator/main.ts');

describe('dmtp coordinator against a frozen etcd', function () {
  this.timeout(60_000);
  const etcd = new OwnEtcd(`frozen-${Math.random().toString(36).slice(2, 8)}`, 23894, 23994);

  before(async () => {
    await etcd.start();
    etcd.pause();
  });
  after(() => etcd.destroy());

  it('fails its start naming the etcd that did not answer, and exits', async () => {
    const res = await collect(
      startCli(['coordinator', '--etcd', etcd.endpoint, '--prefix', '/frozen', '--id', 'frozen-1']),
      45_000,
    );
    assert.equal(res.code, 1, `exit code (stderr: ${res.stderr})`);
    assert.match(
      plainLines(res.stderr).join('\n'),
      new RegExp(`^dmtp coordinator: cannot reach etcd at ${etcd.endpoint} \\(.*DEADLINE_EXCEEDED`),
    );
  });

  it('takes Ctrl-C while it waits for etcd in its start, and exits 0', async () => {
    const child = startCli([
      'coordinator',
      '--etcd',
      etcd.endpoint,
      '--prefix',
      '/frozen',
      '--id',
      'frozen-2',
    ]);
    const done = collect(child, 45_000);
    await starting(child); // its first etcd call waits 5 s (three times) before failing
    child.kill('SIGINT');
    const res = await done;
    assert.deepEqual(plainLines(res.stderr), ['dmtp coordinator: frozen-2 stopped by SIGINT while starting']);
    assert.equal(res.code, 0, 'stopped as asked: not a failure (as coordinator/main.ts)');
    assert.equal(res.stdout, '', 'it never said it serves');
  });

  it('coordinator/main.ts: takes SIGTERM while starting and exits 0', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', MAIN], {
      env: cliEnv({
        ETCD_ENDPOINTS: etcd.endpoint,
        DMTP_ETCD_PREFIX: '/frozen',
        DMTP_COORDINATOR_ID: 'frozen-3',
      }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const done = collect(child, 45_000);
    await starting(child);
    child.kill('SIGTERM');
    const res = await done;
    assert.deepEqual(plainLines(res.stderr), ['coordinator stopped by SIGTERM while starting']);
    assert.equal(res.code, 0);
    assert.equal(res.stdout, '', 'it never said ready');
  });
});
