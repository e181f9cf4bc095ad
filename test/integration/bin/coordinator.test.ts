import { strict as assert } from 'node:assert';
import type { ChildProcess } from 'node:child_process';
import { Etcd3 } from 'etcd3';
import { waitFor } from '../../support/coordinator-wait';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { collect, plainLines, runCli, startCli, type CliResult } from './run-cli';

describe('dmtp coordinator (a child process on real etcd)', function () {
  this.timeout(30_000);
  let prefix: string;
  let child: ChildProcess | undefined;

  beforeEach(function () {
    prefix = `/dmtp-test/${nameFor(this)}`;
  });
  afterEach(async () => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    child = undefined;
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    await etcd.delete().prefix(prefix);
    etcd.close();
  });

  it('serves, registers as dmtp-coordinator for the other commands, and deregisters on SIGTERM', async () => {
    const id = `cli-${Math.random().toString(36).slice(2, 8)}`;
    child = startCli(['coordinator', '--json', '--id', id, '--prefix', prefix], { DMTP_LOG_LEVEL: 'warn' });
    const done: Promise<CliResult> = collect(child);
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    const ready = await waitFor(
      'the ready line',
      () => out.includes('\n') && JSON.parse(out.split('\n')[0]),
      20_000,
    );
    assert.equal(ready.ready, true);
    assert.equal(ready.id, id);

    const listed = await runCli(['services', 'dmtp-coordinator', '--prefix', prefix, '--json']);
    assert.deepEqual(
      (JSON.parse(listed.stdout) as { instanceId: string; address: string }[]).map((i) => [
        i.instanceId,
        i.address,
      ]),
      [[id, ready.address]],
    );
    const txs = await runCli(['tx', 'list', '--prefix', prefix, '--json']);
    assert.equal(txs.code, 0, txs.stderr);
    assert.deepEqual(JSON.parse(txs.stdout), []);

    child.kill('SIGTERM');
    const exit = await done;
    assert.equal(exit.code, 0, exit.stderr);
    const after = await runCli(['services', 'dmtp-coordinator', '--prefix', prefix, '--json']);
    assert.deepEqual(JSON.parse(after.stdout), [], 'deregistered before it stopped');
  });

  it('an unreachable etcd is one line on stderr and exit code 1, within seconds', async () => {
    const r = await runCli(['coordinator', '--etcd', 'http://127.0.0.1:1', '--prefix', prefix], {
      DMTP_LOG_LEVEL: 'silent',
    });
    assert.equal(r.code, 1);
    assert.deepEqual(plainLines(r.stderr), [
      'dmtp coordinator: cannot reach etcd at http://127.0.0.1:1 (connect ECONNREFUSED 127.0.0.1:1)',
    ]);
    assert.ok(r.ms < 5_000, `took ${r.ms} ms`);
  });
});
