// coordinator/main.ts (the process the benches and fault tests start) refuses a setting it cannot read in one
// line on stderr and exit code 1, before it connects to anything. Before, a yes/no spelled `no` or `yes` was
// ignored (the default used, silently), a fractional port accepted, and a bad setting printed a stack trace.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const MAIN = path.join(__dirname, '..', '..', '..', 'coordinator', 'main.ts');

describe('coordinator/main.ts settings from the environment', function () {
  this.timeout(60_000);
  const run = (env: Record<string, string>) =>
    spawnSync(process.execPath, ['--import', 'tsx', MAIN], {
      env: { ...process.env, DMTP_LOG_LEVEL: 'error', ETCD_ENDPOINTS: 'http://127.0.0.1:1', ...env },
      encoding: 'utf8',
      timeout: 30_000,
    });

  for (const [env, message] of [
    [{ DMTP_HA: 'maybe' }, /DMTP_HA must be 1\/true\/yes\/on or 0\/false\/no\/off, not 'maybe'/],
    [{ DMTP_LOG_PREPARE: 'si' }, /DMTP_LOG_PREPARE must be/],
    [{ DMTP_TRACING: 'maybe' }, /DMTP_TRACING must be 1\/true\/yes\/on or 0\/false\/no\/off, not 'maybe'/],
    [
      { KAFKA_BROKERS: '127.0.0.1:1', DMTP_KAFKA_AUTO_CREATE_TOPICS: 'never' },
      /DMTP_KAFKA_AUTO_CREATE_TOPICS must be 1\/true\/yes\/on or 0\/false\/no\/off, not 'never'/,
    ],
    [{ DMTP_COORDINATOR_PORT: '1.5' }, /DMTP_COORDINATOR_PORT must be a whole number >= 0, not '1.5'/],
    [{ DMTP_PHASE2_CALL_TIMEOUT_MS: '0' }, /phase2CallTimeoutMs must be a whole number in 1-/],
    // etcd3 refused a 0 s lease with a RangeError and its stack
    [{ DMTP_HA_LEASE_TTL_S: '0' }, /DMTP_HA_LEASE_TTL_S must be a whole number >= 1, not '0'/],
    // a scan every 0 ms was a busy loop; a retire-after of 0 retired a taken-over owner at its first quiet scan
    [{ DMTP_HA_SCAN_MS: '0' }, /DMTP_HA_SCAN_MS must be a whole number >= 1, not '0'/],
    [{ DMTP_HA_RETIRE_AFTER_MS: '0' }, /DMTP_HA_RETIRE_AFTER_MS must be a whole number >= 1, not '0'/],
    // past the longest Node timer, setInterval runs every 1 ms
    [
      { DMTP_HA_SCAN_MS: '3000000000' },
      /ha\.scanIntervalMs must be a whole number in 1-2147483647, got 3000000000/,
    ],
    // etcd not answering: etcd3's GRPC… errors carry no code, and printed their stack
    [{}, /^coordinator failed to start: cannot reach etcd at http:\/\/127\.0\.0\.1:1 \(.*ECONNREFUSED/m],
  ] as const) {
    it(`refuses ${JSON.stringify(env)} in one line, exit code 1`, () => {
      const r = run(env);
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, message);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    });
  }
});
