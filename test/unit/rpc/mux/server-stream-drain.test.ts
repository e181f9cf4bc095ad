/**
 * A mux server stream's graceful end under backpressure, with a FAKE duplex stream (pure logic, no socket):
 * answers held back by a full window are written on 'drain', and the stream then ends, so a server stop never
 * waits out its grace period for it.
 */
import { strict as assert } from 'node:assert';
import { EventEmitter } from 'node:events';
import { systemClock } from '../../../../common/clock';
import { decodeBatch, encodeBatch, FrameKind } from '../../../../rpc/mux/codec';
import { MuxServerStream, type ServerStreamContext } from '../../../../rpc/mux/server-stream';
import { CallAdmission } from '../../../../rpc/admission';

class FakeStream extends EventEmitter {
  accept = true;
  ended = false;
  writes: Buffer[] = [];
  getPeer() {
    return 'fake';
  }
  sendMetadata() {}
  write(b: Buffer) {
    this.writes.push(b);
    return this.accept;
  }
  pause() {}
  resume() {}
  end() {
    this.ended = true;
  }
}

const tick = () => new Promise((r) => setTimeout(r, 20));

describe('mux server stream: drain under backpressure', () => {
  it('writes the answers held back by a full window on drain, then ends the stream', async () => {
    const fake = new FakeStream();
    const gates = new Map<string, () => void>();
    const entry = {
      path: '/t.S/M',
      deserialize: (b: Buffer) => b,
      serialize: (b: unknown) => b as Buffer,
      handler: (c: { request: unknown }) =>
        new Promise((resolve) => gates.set(String(c.request), () => resolve(c.request))),
    };
    const s = new MuxServerStream(fake as never, {
      lookup: () => entry as never,
      middleware: [],
      maxInFlight: 100,
      maxRequestBytes: 1e6,
      maxResponseBytes: 1e6,
      maxBatchBytes: 1 << 20,
      clock: systemClock,
      draining: () => false,
      admission: new CallAdmission(Infinity),
    } satisfies ServerStreamContext);
    let finished = false;
    void s.finished.then(() => (finished = true));
    const frames = [1, 2].map((id) => ({
      callId: id,
      kind: FrameKind.KIND_REQUEST,
      method: '/t.S/M',
      payload: Buffer.from(`c${id}`),
    }));
    fake.emit('data', encodeBatch(frames));
    await tick();
    fake.accept = false; // the peer's window is full: the first answer's write is refused
    gates.get('c1')!();
    await tick();
    s.drain(); // a graceful stop begins with one call in flight
    gates.get('c2')!(); // its answer waits behind the backpressure
    await tick();
    assert.equal(fake.ended, false, 'not ended with an answer unwritten');
    fake.accept = true;
    fake.emit('drain');
    await tick();
    assert.deepEqual(
      decodeBatch(fake.writes.at(-1)!).map((f) => f.callId),
      [2],
    );
    assert.equal(fake.ended, true);
    assert.equal(finished, true);
  });
});
