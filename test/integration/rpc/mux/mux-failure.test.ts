import { strict as assert } from 'node:assert';
import * as grpc from '@grpc/grpc-js';
import { DmtpError } from '../../../../common/errors';
import { MuxTransport } from '../../../../rpc/mux';
import { startEchoChild, type EchoChild } from '../../../support/mux-child';
import { ECHO } from '../../../support/mux-echo';

describe('rpc/mux: a server killed mid-burst', function () {
  this.timeout(60_000);
  let child: EchoChild | undefined;
  let t: MuxTransport | undefined;

  afterEach(async () => {
    t?.close();
    await child?.kill();
  });

  it('gives every call exactly one outcome: answered, or UNAVAILABLE once', async () => {
    child = await startEchoChild();
    const transport = (t = new MuxTransport({ address: child.info.grpc }));
    const TOTAL = 4_000;
    const KILL_AFTER = 800;
    const outcomes = new Map<number, 'ok' | DmtpError>();
    let issued = 0;
    let doubles = 0;
    let killing: Promise<void> | undefined;
    const record = (id: number, o: 'ok' | DmtpError) => {
      if (outcomes.has(id)) doubles++;
      outcomes.set(id, o);
    };
    const worker = async () => {
      while (issued < TOTAL) {
        const id = issued++;
        const payload = Buffer.from(`call-${id}`);
        try {
          const r = await transport.invoke({
            method: ECHO,
            request: payload,
            metadata: new grpc.Metadata(),
            deadline: Date.now() + 10_000,
          });
          assert.equal(r.response.toString(), `call-${id}`);
          record(id, 'ok');
        } catch (err) {
          assert.ok(err instanceof DmtpError, `not a DmtpError: ${err}`);
          record(id, err);
        }
        if (outcomes.size === KILL_AFTER && !killing) killing = child!.kill();
      }
    };
    await Promise.all(Array.from({ length: 64 }, worker));
    await killing;

    assert.equal(doubles, 0);
    assert.equal(outcomes.size, TOTAL, 'every call issued has an outcome');
    const failures = [...outcomes.values()].filter((o): o is DmtpError => o !== 'ok');
    const successes = TOTAL - failures.length;
    assert.ok(successes >= KILL_AFTER, `${successes} answered before the kill`);
    assert.ok(failures.length > 0, 'calls after the kill fail');
    for (const f of failures) {
      assert.equal(f.code, grpc.status.UNAVAILABLE, `${f.name}: ${f.message}`);
      assert.equal(f.details.address, child.info.grpc);
    }
    assert.ok(
      failures.some((f) => f.details.notSent !== true),
      'calls in flight when the server died may have reached it: not notSent',
    );
    assert.ok(
      failures.some((f) => f.details.notSent === true),
      'calls started after the failure were never sent',
    );
    assert.equal(transport.inFlight, 0);
  });
});
