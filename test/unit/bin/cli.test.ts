import { strict as assert } from 'node:assert';
import { main } from '../../../bin/cli';

async function run(...argv: string[]) {
  let out = '';
  let err = '';
  const code = await main(argv, { out: (s) => void (out += s), err: (s) => void (err += s) }, {});
  return { code, out, err };
}

describe('bin/cli: dispatch and help (no services needed)', () => {
  it('lists every command on --help (exit 0) and without arguments (exit 1)', async () => {
    const help = await run('--help');
    assert.equal(help.code, 0);
    for (const c of ['coordinator', 'services', 'tx list', 'tx show', 'tx resolve', 'events tail'])
      assert.match(help.out, new RegExp(`^  ${c} `, 'm'));
    assert.equal((await run()).code, 1);
  });

  it('every command has its own --help', async () => {
    for (const argv of [
      ['coordinator'],
      ['services'],
      ['tx', 'list'],
      ['tx', 'show'],
      ['tx', 'resolve'],
      ['events', 'tail'],
    ]) {
      const r = await run(...argv, '--help');
      assert.equal(r.code, 0, argv.join(' '));
      assert.match(r.out, new RegExp(`^Usage: dmtp ${argv.join(' ')}`), argv.join(' '));
      assert.match(r.out, /Examples:/, argv.join(' '));
    }
    assert.match((await run('tx', '--help')).out, /^Usage: dmtp tx <command>/);
  });

  it('unknown commands and bad arguments are one line on stderr with exit code 1', async () => {
    const cases: [string[], RegExp][] = [
      [['nope'], /^dmtp: unknown command 'nope' \(see 'dmtp --help'\)\n$/],
      [['tx', 'nope'], /^dmtp tx: unknown command 'tx nope'/],
      [['tx', 'show'], /^dmtp tx show: missing <xid>/],
      [['tx', 'show', 'not-an-xid'], /^dmtp tx show: malformed xid 'not-an-xid'/],
      [['tx', 'resolve', 'c:1:2'], /^dmtp tx resolve: give exactly one of --commit or --abort/],
      [['tx', 'resolve', 'c:1:2', '--commit', '--abort'], /^dmtp tx resolve: give exactly one/],
      [['tx', 'list', '--state', 'stuck'], /^dmtp tx list: unknown state 'stuck' \(one of active, preparing/],
      [
        ['tx', 'list', '--coordinator', 'nohostport'],
        /^dmtp tx list: invalid coordinator address 'nohostport'/,
      ],
      [['services', '--timeout', 'soon'], /^dmtp services: --timeout: invalid duration 'soon'/],
      // A wait of nothing, in the flag's words (it was an internal option's, or no timeout at all)
      [['services', '--timeout', '0s'], /^dmtp services: --timeout: must be at least 1ms, not '0s'/],
      [['events', 'tail', 'x', '--timeout', '0ms'], /^dmtp events tail: --timeout: must be at least 1ms/],
      // Given empty: refused, not read as "every state"
      [['tx', 'list', '--state='], /^dmtp tx list: unknown state ''/],
    ];
    for (const [argv, re] of cases) {
      const r = await run(...argv);
      assert.equal(r.code, 1, argv.join(' '));
      assert.equal(r.out, '', argv.join(' '));
      assert.match(r.err, re, argv.join(' '));
      assert.equal(r.err.trimEnd().split('\n').length, 1, argv.join(' '));
    }
  });

  it('DMTP_DEBUG=0 adds no stack; DMTP_DEBUG=1 adds the stack of the cause', async () => {
    const withEnv = async (env: Record<string, string>) => {
      let err = '';
      const code = await main(
        ['tx', 'show', 'c:1:2', '--coordinator', '127.0.0.1:1', '--timeout', '500ms'],
        {
          out: () => undefined,
          err: (s) => void (err += s),
        },
        env,
      );
      return { code, err };
    };
    const off = await withEnv({ DMTP_DEBUG: '0' });
    assert.equal(off.code, 1);
    assert.equal(off.err.trimEnd().split('\n').length, 1, off.err);
    const on = await withEnv({ DMTP_DEBUG: '1' });
    assert.match(on.err, /\n\s+at /, 'a stack');
  });
});
