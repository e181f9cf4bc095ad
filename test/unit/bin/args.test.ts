import { strict as assert } from 'node:assert';
import {
  formatDuration,
  helpText,
  parseArgs,
  parseDuration,
  UsageError,
  type CommandSpec,
} from '../../../bin/args';

const spec: CommandSpec = {
  name: 'tx list',
  summary: 'List transactions.',
  positionals: [{ name: 'xid', description: 'the transaction id' }],
  flags: {
    json: { type: 'boolean', description: 'JSON output' },
    state: { type: 'string', description: 'only this state', short: 's' },
    limit: { type: 'integer', description: 'at most', default: 1000 },
    'older-than': { type: 'duration', description: 'age' },
    etcd: {
      type: 'string',
      description: 'endpoints',
      env: 'ETCD_ENDPOINTS',
      default: 'http://127.0.0.1:23790',
    },
    register: { type: 'boolean', description: 'register', default: true },
  },
  examples: ['dmtp tx list --json'],
};

const usage = (re: RegExp) => (err: unknown) => {
  assert.ok(err instanceof UsageError, `expected a UsageError, got ${String(err)}`);
  assert.match(err.message, re);
  assert.equal(err.command, 'tx list');
  return true;
};

describe('bin/args: parseArgs', () => {
  it('reads --flag value, --flag=value, -s value and bare booleans', () => {
    const p = parseArgs(['--state', 'active', '--limit=5', '--json', 'x:1:2'], spec, {});
    assert.deepEqual(p.positionals, ['x:1:2']);
    assert.equal(p.flags.state, 'active');
    assert.equal(p.flags.limit, 5);
    assert.equal(p.flags.json, true);
    assert.equal(parseArgs(['-s', 'aborted'], spec, {}).flags.state, 'aborted');
  });

  it('fills defaults, and the environment wins over the default but not over the flag', () => {
    assert.equal(parseArgs([], spec, {}).flags.etcd, 'http://127.0.0.1:23790');
    assert.equal(parseArgs([], spec, { ETCD_ENDPOINTS: 'http://e:1' }).flags.etcd, 'http://e:1');
    assert.equal(
      parseArgs(['--etcd', 'http://f:2'], spec, { ETCD_ENDPOINTS: 'http://e:1' }).flags.etcd,
      'http://f:2',
    );
    assert.equal(parseArgs([], spec, {}).flags.json, undefined);
  });

  it('--no-<flag> turns a boolean off; --flag=false too', () => {
    assert.equal(parseArgs([], spec, {}).flags.register, true);
    assert.equal(parseArgs(['--no-register'], spec, {}).flags.register, false);
    assert.equal(parseArgs(['--register=false'], spec, {}).flags.register, false);
  });

  it('converts durations and integers, and refuses malformed ones', () => {
    assert.equal(parseArgs(['--older-than', '5m'], spec, {}).flags['older-than'], 300_000);
    assert.throws(
      () => parseArgs(['--older-than', '5'], spec, {}),
      usage(/--older-than: invalid duration '5'/),
    );
    assert.throws(() => parseArgs(['--limit', 'ten'], spec, {}), usage(/--limit expects a whole number/));
    assert.equal(parseArgs(['--older-than', '60d'], spec, {}).flags['older-than'], 60 * 86_400_000, 'an age');
    const waits: CommandSpec = {
      ...spec,
      flags: { wait: { type: 'duration', timer: true, description: 'w' } },
    };
    assert.equal(parseArgs(['--wait', '24d'], waits, {}).flags.wait, 24 * 86_400_000);
    assert.throws(
      () => parseArgs(['--wait', '25d'], waits, {}),
      usage(/--wait: '25d' is longer than the longest wait/),
    );
  });

  it('refuses unknown options, a missing value and extra arguments', () => {
    assert.throws(() => parseArgs(['--bogus'], spec, {}), usage(/unknown option '--bogus'/));
    assert.throws(() => parseArgs(['-x'], spec, {}), usage(/unknown option '-x'/));
    assert.throws(() => parseArgs(['--state'], spec, {}), usage(/'--state' needs a value/));
    assert.throws(() => parseArgs(['--state', '--json'], spec, {}), usage(/'--state' needs a value/));
    assert.throws(() => parseArgs(['a', 'b'], spec, {}), usage(/unexpected argument 'b'/));
  });

  it('reports a missing required argument, unless help was asked for', () => {
    const required: CommandSpec = {
      ...spec,
      positionals: [{ name: 'xid', description: 'id', required: true }],
    };
    assert.throws(() => parseArgs([], required, {}), usage(/missing <xid>/));
    assert.equal(parseArgs(['--help'], required, {}).help, true);
    assert.equal(parseArgs(['-h'], required, {}).help, true);
  });

  it('takes everything after -- as arguments', () => {
    assert.deepEqual(parseArgs(['--', '--json'], spec, {}).positionals, ['--json']);
  });
});

describe('bin/args: durations', () => {
  it('parses ms, s, m, h, d and combinations', () => {
    assert.equal(parseDuration('250ms'), 250);
    assert.equal(parseDuration('30s'), 30_000);
    assert.equal(parseDuration('5m'), 300_000);
    assert.equal(parseDuration('1h'), 3_600_000);
    assert.equal(parseDuration('1h30m'), 5_400_000);
    assert.equal(parseDuration('1.5s'), 1_500);
    assert.equal(parseDuration('2d'), 172_800_000);
  });

  it('refuses a bare number, an unknown unit, garbage and the empty string', () => {
    for (const bad of ['30', '5x', 'm5', '', '1h 30m', '-5s', '5s!']) {
      assert.throws(() => parseDuration(bad), UsageError, bad);
    }
  });

  it('formats milliseconds short', () => {
    assert.equal(formatDuration(850), '850ms');
    assert.equal(formatDuration(42_000), '42s');
    assert.equal(formatDuration(303_000), '5m03s');
    assert.equal(formatDuration(7_500_000), '2h05m');
    assert.equal(formatDuration(3 * 86_400_000 + 4 * 3_600_000), '3d04h');
    assert.equal(formatDuration(-2_000), '-2s');
  });
});

describe('bin/args: helpText', () => {
  it('shows usage, every flag with its env and default, and the examples', () => {
    const h = helpText({
      ...spec,
      flags: { ...spec.flags, timeout: { type: 'duration', description: 'deadline', default: 5_000 } },
    });
    assert.match(h, /^Usage: dmtp tx list \[xid\] \[options\]/);
    assert.match(h, /-s, --state <string> +only this state/);
    assert.match(h, /--etcd <string> +endpoints \(env ETCD_ENDPOINTS, default http:\/\/127\.0\.0\.1:23790\)/);
    assert.match(h, /--timeout <duration> +deadline \(default 5s\)/);
    assert.match(h, /-h, --help/);
    assert.match(h, /Examples:\n {2}dmtp tx list --json/);
  });
});
