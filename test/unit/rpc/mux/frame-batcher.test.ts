import { strict as assert } from 'node:assert';
import { MuxFrame_Kind } from '../../../../proto/gen/dmtp/v1/mux';
import { decodeBatch, type Frame } from '../../../../rpc/mux/codec';
import { FrameBatcher } from '../../../../rpc/mux/frame-batcher';

const req = (callId: number, bytes = 10): Frame => ({
  callId,
  kind: MuxFrame_Kind.KIND_REQUEST,
  method: '/t.S/M',
  payload: Buffer.alloc(bytes, callId % 256),
});

/** A batcher whose flushes run when the test says (`tick()`), writing into `writes`. */
function harness(
  opts: { accept?: () => boolean; maxBatchBytes?: number; prepare?: (f: Frame) => boolean } = {},
) {
  const writes: Frame[][] = [];
  const scheduled: Array<() => void> = [];
  const b = new FrameBatcher({
    maxBatchBytes: opts.maxBatchBytes ?? 1 << 20,
    write: (buf) => {
      writes.push(decodeBatch(buf));
      return opts.accept ? opts.accept() : true;
    },
    prepare: opts.prepare,
    schedule: (fn) => scheduled.push(fn),
  });
  const tick = () => scheduled.splice(0).forEach((fn) => fn());
  return { b, writes, scheduled, tick };
}

describe('mux FrameBatcher', () => {
  it('coalesces every frame pushed in one turn into one batch, scheduling one flush', () => {
    const { b, writes, scheduled, tick } = harness();
    for (let i = 1; i <= 100; i++) b.push(req(i));
    assert.equal(scheduled.length, 1);
    tick();
    assert.equal(writes.length, 1);
    assert.deepEqual(
      writes[0].map((f) => f.callId),
      Array.from({ length: 100 }, (_, i) => i + 1),
    );
    b.push(req(101));
    tick();
    assert.equal(writes.length, 2);
  });

  it('splits a batch above maxBatchBytes, keeping frame order', () => {
    const { b, writes, tick } = harness({ maxBatchBytes: 1000 });
    for (let i = 1; i <= 10; i++) b.push(req(i, 300));
    tick();
    assert.ok(writes.length >= 4, `expected several batches, got ${writes.length}`);
    assert.deepEqual(
      writes.flat().map((f) => f.callId),
      Array.from({ length: 10 }, (_, i) => i + 1),
    );
  });

  it('counts metadata toward maxBatchBytes: large trailers are split across batches too', () => {
    const sizes: number[] = [];
    const scheduled: Array<() => void> = [];
    const b = new FrameBatcher({
      maxBatchBytes: 64 * 1024,
      write: (buf) => (sizes.push(buf.length), true),
      schedule: (fn) => scheduled.push(fn),
    });
    for (let i = 1; i <= 64; i++) b.push({ ...req(i, 1), metadata: { 'x-big': 'm'.repeat(8 * 1024) } });
    scheduled.splice(0).forEach((fn) => fn());
    assert.ok(sizes.length > 1, 'split');
    assert.ok(
      sizes.every((n) => n <= 64 * 1024 + 16 * 1024),
      `no write far over the limit: ${Math.max(...sizes)} bytes`,
    );
  });

  it('after a write the stream refuses, writes nothing until drained()', () => {
    let accept = false;
    const { b, writes, scheduled, tick } = harness({ accept: () => accept, maxBatchBytes: 200 });
    for (let i = 1; i <= 4; i++) b.push(req(i, 150));
    tick();
    assert.equal(writes.length, 1);
    assert.ok(b.isBlocked);
    b.push(req(5));
    assert.equal(scheduled.length, 0, 'no flush is scheduled while blocked');
    accept = true;
    b.drained();
    tick();
    assert.deepEqual(
      writes.flat().map((f) => f.callId),
      [1, 2, 3, 4, 5],
    );
    assert.equal(b.pending, 0);
  });

  it('drops frames that prepare() refuses', () => {
    const { b, writes, tick } = harness({ prepare: (f) => f.callId % 2 === 0 });
    for (let i = 1; i <= 6; i++) b.push(req(i));
    tick();
    assert.deepEqual(
      writes[0].map((f) => f.callId),
      [2, 4, 6],
    );
  });

  it('reports each frame written, and sends frames pushed while preparing in the next batch', () => {
    const written: number[] = [];
    const writes: number[][] = [];
    const scheduled: Array<() => void> = [];
    const b: FrameBatcher = new FrameBatcher({
      maxBatchBytes: 1 << 20,
      write: (buf) => (writes.push(decodeBatch(buf).map((f) => f.callId)), true),
      prepare: (f) => {
        if (f.callId === 2) b.push({ callId: 9, kind: MuxFrame_Kind.KIND_CANCEL });
        return true;
      },
      written: (f) => written.push(f.callId),
      schedule: (fn) => scheduled.push(fn),
    });
    b.push(req(1));
    b.push(req(2));
    scheduled.splice(0).forEach((fn) => fn());
    assert.deepEqual(writes, [[1, 2]]);
    scheduled.splice(0).forEach((fn) => fn());
    assert.deepEqual(writes, [[1, 2], [9]]);
    assert.deepEqual(written, [1, 2, 9]);
  });

  it('takePending() hands back what was never written', () => {
    const { b, writes } = harness();
    b.push(req(1));
    b.push(req(2));
    assert.deepEqual(
      b.takePending().map((f) => f.callId),
      [1, 2],
    );
    b.flush();
    assert.equal(writes.length, 0);
  });
});
