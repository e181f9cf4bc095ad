// A call made in a transaction to a server that ignores it — a DMTP server with no participant middleware — is
// answered as if all were well, and its work stays whatever the transaction's outcome. The caller cannot undo that,
// but it can tell: a participant's answer carries a branch or `dmtp-tx-taken`, this one neither. Real servers on
// etcd, over both transports the client may take; no coordinator (the calls run in a hand-made context, the
// participant's branch is rolled back when it stops).
import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { EtcdRegistry } from '../../../registry';
import { client, startServer, UnaryTransport, type RpcServer } from '../../../rpc';
import { txClientMiddleware } from '../../../txapi';
import { runInTx } from '../../../txapi/context';
import { rawMethod } from '../../support/echo-service';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { startNoopParticipant, type NoopParticipant } from '../../support/noop-participant';
import { initiatorContext } from '../../support/tx-context';
import { freePort } from '../../support/txapi-bank';

/** The JSON log lines written to stderr while `f` runs (still written through). */
async function stderrLines(f: () => Promise<void>): Promise<Record<string, unknown>[]> {
  const lines: Record<string, unknown>[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: never[]) => {
    for (const line of String(chunk).split('\n')) {
      if (line.startsWith('{')) lines.push(JSON.parse(line) as Record<string, unknown>);
    }
    return write(chunk, ...rest);
  }) as typeof process.stderr.write;
  try {
    await f();
  } finally {
    process.stderr.write = write;
  }
  return lines;
}

const IGNORED = /answered by a server that ignored it/;

/** Methods of this test's own: the warning is said once per method and process, whichever test called it first. */
const AUDIT = {
  record: rawMethod('/dmtp.test.Ignoring/Record'),
  check: rawMethod('/dmtp.test.Ignoring/Check'),
  outside: rawMethod('/dmtp.test.Ignoring/Outside'),
};

describe('a call in a transaction to a server that ignores transactions', function () {
  this.timeout(30_000);
  let registry: EtcdRegistry;
  let dir: string;
  let participant: NoopParticipant | undefined;
  let plain: RpcServer | undefined;

  beforeEach(async function () {
    const prefix = `/${nameFor(this, 40)}`;
    registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dmtp-ignored-'));
    participant = await startNoopParticipant({ service: 'ledger', registry, dir });
    const port = await freePort();
    plain = await startServer({
      registry,
      port,
      instance: { instanceId: 'audit-1' },
      services: [
        {
          name: 'audit',
          definition: AUDIT,
          handlers: {
            record: ({ request }) => request,
            check: ({ request }) => request,
            outside: ({ request }) => request,
          },
        },
      ],
      drainDelayMs: 0,
      gracePeriodMs: 500,
    });
  });

  afterEach(async () => {
    await participant?.stop();
    await plain?.stop();
    await registry.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('is said once per method, with the xid, the method and the instance; a participant’s answer is not', async () => {
    const muxAudit = client(registry, 'audit', AUDIT, { middleware: [txClientMiddleware] });
    const unaryAudit = client(registry, 'audit', AUDIT, {
      middleware: [txClientMiddleware],
      transportFactory: (i) => new UnaryTransport(i.address),
    });
    try {
      const tx = initiatorContext();
      const lines = await stderrLines(() =>
        runInTx(tx, async () => {
          await participant!.c.noop(Buffer.from('x')); // a participant: its branch comes back
          for (let i = 0; i < 3; i++) await muxAudit.record(Buffer.from('x')); // multiplexed path
          await unaryAudit.check(Buffer.alloc(0)); // grpc-js unary
        }),
      );
      const said = lines.filter((l) => IGNORED.test(String(l.msg)));
      assert.deepEqual(
        said.map((l) => [l.level, l.xid, l.method, l.instanceId]),
        [
          ['warn', tx.xid, '/dmtp.test.Ignoring/Record', 'audit-1'],
          ['warn', tx.xid, '/dmtp.test.Ignoring/Check', 'audit-1'],
        ],
      );
      assert.deepEqual(
        tx.branches.map((b) => b.service),
        ['ledger'],
        'the participant’s branch is in the transaction, the ignoring server’s calls left none',
      );

      // Outside a transaction nothing is said: there is nothing to ignore.
      const outside = await stderrLines(async () => {
        await muxAudit.outside(Buffer.from('0'));
      });
      assert.deepEqual(
        outside.filter((l) => IGNORED.test(String(l.msg))),
        [],
      );
    } finally {
      muxAudit.close();
      unaryAudit.close();
    }
  });
});
