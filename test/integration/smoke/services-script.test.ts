import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const SCRIPT = path.resolve(__dirname, '../../../scripts/services.sh');

// scripts/services.sh itself, on ports and a state folder of its own (never the shared services):
// `up` twice starts no duplicates, `down` leaves no process behind, and a taken port is a one-line error.
describe('smoke: scripts/services.sh', function () {
  this.timeout(90_000);
  let state: string;
  const env = () => ({
    ...process.env,
    ETCD_ENDPOINTS: '',
    DATABASE_URL: '',
    DMTP_STATE_DIR: state,
    DMTP_ETCD_PORT: '24590',
    DMTP_ETCD_PEER_PORT: '24600',
    DMTP_PG_PORT: '26432',
  });
  const sh = (...args: string[]) => run('bash', [SCRIPT, ...args], { env: env() });
  const pidOf = (name: string) => Number(fs.readFileSync(path.join(state, 'run', `${name}.pid`), 'utf8'));
  // A process that exited but was not yet reaped by its (foreign) parent is a zombie: it counts as gone.
  const alive = (pid: number) => {
    try {
      return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
    } catch {
      return false;
    }
  };

  before(() => {
    state = fs.mkdtempSync(path.join(os.tmpdir(), 'dmtp-services-'));
    fs.chmodSync(state, 0o755); // PostgreSQL runs as the 'postgres' user when we are root
  });
  after(async () => {
    await sh('down', 'etcd', 'postgres').catch(() => undefined);
    fs.rmSync(state, { recursive: true, force: true });
  });

  it('starts each service once, however often `up` runs, and `down` leaves nothing running', async () => {
    const startedFile = path.join(state, 'started');
    await sh('up', 'etcd', 'postgres', '--started-file', startedFile);
    assert.deepEqual(fs.readFileSync(startedFile, 'utf8').trim().split('\n').sort(), ['etcd', 'postgres']);
    const etcd = pidOf('etcd0');
    const pg = pidOf('postgres');
    assert.ok(alive(etcd) && alive(pg));

    const again = path.join(state, 'started-again');
    const second = await sh('up', 'etcd', 'postgres', '--started-file', again);
    assert.match(second.stderr, /etcd already running/);
    assert.match(second.stderr, /postgres already running/);
    assert.equal(fs.existsSync(again), false, 'a second up starts nothing');
    assert.equal(pidOf('etcd0'), etcd);
    assert.equal(pidOf('postgres'), pg);

    const env = (await sh('env')).stdout;
    assert.match(env, /ETCD_ENDPOINTS=http:\/\/127\.0\.0\.1:24590/);
    assert.match(env, /DATABASE_URL=postgres:\/\/postgres@127\.0\.0\.1:26432\/postgres/);

    await sh('down', 'etcd', 'postgres');
    assert.equal(alive(etcd), false, 'etcd stopped');
    assert.equal(alive(pg), false, 'postgres stopped');
    assert.match((await sh('status')).stdout, /etcd0\s+stopped[\s\S]*postgres\s+stopped/);
  });

  it('refuses a taken port with one line that says what to do', async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(24590, '127.0.0.1', resolve));
    try {
      const err = await sh('up', 'etcd').then(
        () => assert.fail('up must fail when the port is taken'),
        (e: { code: number; stderr: string }) => e,
      );
      assert.equal(err.code, 1);
      assert.equal(err.stderr.trim().split('\n').length, 1, `one line, got: ${err.stderr}`);
      assert.match(err.stderr, /port 24590 .* is taken .*DMTP_ETCD_PORT/);
    } finally {
      await new Promise((resolve) => blocker.close(resolve));
    }
  });

  it('uses an endpoint given in the environment only once it answers; its own local one it starts', async () => {
    // Before, any exported value was trusted: a shell that had eval'd `env` ran every later `npm test` and
    // demo against services that were down, and `up` said "using etcd at …".
    const err = await run('bash', [SCRIPT, 'up', 'etcd'], {
      env: { ...env(), ETCD_ENDPOINTS: 'http://127.0.0.1:1' },
    }).then(
      () => assert.fail('up must fail when the given etcd does not answer'),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(err.code, 1);
    assert.match(
      err.stderr,
      /etcd at http:\/\/127\.0\.0\.1:1 \(from ETCD_ENDPOINTS\) does not answer: .*unset ETCD_ENDPOINTS/,
    );
    // The value `env` prints for this script's own etcd is not "given": `up` starts that etcd.
    const own = (await sh('env')).stdout.match(/^ETCD_ENDPOINTS=(.*)$/m)![1];
    const started = await run('bash', [SCRIPT, 'up', 'etcd'], { env: { ...env(), ETCD_ENDPOINTS: own } });
    assert.doesNotMatch(started.stderr, /using etcd/);
    assert.ok(alive(pidOf('etcd0')));
    await sh('down', 'etcd');
  });
});
