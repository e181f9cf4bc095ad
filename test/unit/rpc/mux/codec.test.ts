import { strict as assert } from 'node:assert';
import { MuxBatch, MuxFrame_Kind } from '../../../../proto/gen/dmtp/v1/mux';
import {
  decodeBatch,
  encodeBatch,
  encodedFrameBytes,
  MuxDecodeError,
  type Frame,
} from '../../../../rpc/mux/codec';

const request: Frame = {
  callId: 7,
  kind: MuxFrame_Kind.KIND_REQUEST,
  method: '/dmtp.v1.Participant/Prepare',
  payload: Buffer.from('hello'),
  metadata: { 'dmtp-xid': 'c1:abc:1', 'trace-bin': Buffer.from([1, 2, 255]).toString('base64') },
  deadlineMs: 1500,
};
const response: Frame = {
  callId: 2 ** 40 + 3,
  kind: MuxFrame_Kind.KIND_RESPONSE,
  statusCode: 9,
  statusDetails: 'not now — ünïcode',
};

describe('mux codec', () => {
  it('encodes what the generated MuxBatch decodes, field for field', () => {
    const decoded = MuxBatch.decode(encodeBatch([request, response]));
    assert.equal(decoded.frames.length, 2);
    const [a, b] = decoded.frames;
    assert.equal(a.callId, 7);
    assert.equal(a.kind, MuxFrame_Kind.KIND_REQUEST);
    assert.equal(a.method, request.method);
    assert.deepEqual(a.payload, request.payload);
    assert.deepEqual(a.metadata, request.metadata);
    assert.equal(a.deadlineMs, 1500);
    assert.equal(b.callId, 2 ** 40 + 3);
    assert.equal(b.statusCode, 9);
    assert.equal(b.statusDetails, response.statusDetails);
  });

  it('decodes what the generated MuxBatch encodes', () => {
    const bytes = MuxBatch.encode(
      MuxBatch.fromPartial({
        frames: [{ ...request, payload: request.payload!, metadata: request.metadata! }, response],
      }),
    ).finish();
    const frames = decodeBatch(Buffer.from(bytes));
    assert.equal(frames.length, 2);
    assert.deepEqual({ ...frames[0], payload: Buffer.from(frames[0].payload!) }, request);
    assert.deepEqual(frames[1], response);
  });

  it('leaves absent fields absent: no metadata map is built for a frame without metadata', () => {
    const [f] = decodeBatch(encodeBatch([{ callId: 1, kind: MuxFrame_Kind.KIND_CANCEL }]));
    assert.deepEqual(f, { callId: 1, kind: MuxFrame_Kind.KIND_CANCEL });
  });

  it('reports the exact encoded size of a frame within a batch', () => {
    assert.equal(
      encodedFrameBytes(request) + encodedFrameBytes(response),
      encodeBatch([request, response]).length,
    );
  });

  it('marks a frame with a malformed body but keeps its readable call id', () => {
    // call_id 5, then a length-delimited method field claiming 50 bytes that are not there, inside a frame of 4.
    const frame = Buffer.from([0x08, 0x05, 0x1a, 0x32]);
    const batch = Buffer.concat([Buffer.from([0x0a, frame.length]), frame]);
    const [f] = decodeBatch(batch);
    assert.equal(f.callId, 5);
    assert.match(f.error!, /runs past/);
  });

  it('throws MuxDecodeError for a batch whose framing cannot be read', () => {
    assert.throws(() => decodeBatch(Buffer.from([0x0a, 0x20, 0x08])), MuxDecodeError);
    assert.throws(() => decodeBatch(Buffer.from([0xff, 0xff, 0xff])), MuxDecodeError);
  });

  it('skips unknown fields, as protobuf readers must', () => {
    const known = encodeBatch([{ callId: 3, kind: MuxFrame_Kind.KIND_CANCEL }]);
    // append field 9 (varint) inside the frame: rebuild the frame with one more field
    const frame = Buffer.concat([known.subarray(2), Buffer.from([0x48, 0x01])]);
    const batch = Buffer.concat([Buffer.from([0x0a, frame.length]), frame, Buffer.from([0x10, 0x01])]);
    assert.deepEqual(decodeBatch(batch), [{ callId: 3, kind: MuxFrame_Kind.KIND_CANCEL }]);
  });
});
