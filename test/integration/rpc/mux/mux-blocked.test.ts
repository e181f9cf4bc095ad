import { strict as assert } from 'node:assert';
import * as grpc from '@grpc/grpc-js';
import { setTimeout as sleep } from 'node:timers/promises';
import { DmtpError } from '../../../../common/errors';
import { MuxService } from '../../../../proto/gen/dmtp/v1/mux';
import { MuxTransport } from '../../../../rpc/mux';
import { decodeBatch, encodeBatch, FrameKind } from '../../../../rpc/mux/codec';
import { ECHO } from '../../../support/mux-echo';

/**
 * A frozen peer: it accepts the mux stream (sends its headers) and then reads nothing, so HTTP/2 flow control
 * fills and the client's stream refuses further writes. Calls keep coming and expire unwritten; what the client
 * keeps for them must stay bounded by its limits, not grow with the call rate.
 */
describe('rpc/mux: a peer that stops reading', function () {
  this.timeout(30_000);
  let server: grpc.Server | undefined;
  let t: MuxTransport | undefined;
  const streams: grpc.ServerDuplexStream<Buffer, Buffer>[] = [];

  afterEach(async () => {
    t?.close();
    for (const s of streams.splice(0)) s.destroy();
    await new Promise<void>((resolve) => (server ? server.tryShutdown(() => resolve()) : resolve()));
    server?.forceShutdown();
    server = undefined;
  });

  /**
   * A mux peer that echoes requests while `answering`, or, `frozen`, reads nothing at all (the client's writes back
   * up). Either way it accepts the stream first.
   */
  const testPeer = async (o: { frozen?: boolean } = {}) => {
    server = new grpc.Server();
    const identity = (b: Buffer) => b;
    const peer = { port: 0, answering: true };
    server.register(
      MuxService.call.path,
      (stream: grpc.ServerDuplexStream<Buffer, Buffer>) => {
        streams.push(stream);
        stream.sendMetadata(new grpc.Metadata());
        if (o.frozen) stream.pause();
        stream.on('data', (batch: Buffer) => {
          if (!peer.answering) return;
          const answers = decodeBatch(batch)
            .filter((f) => f.kind === FrameKind.KIND_REQUEST)
            .map((f) => ({ callId: f.callId, kind: FrameKind.KIND_RESPONSE, payload: f.payload }));
          if (answers.length > 0) stream.write(encodeBatch(answers));
        });
      },
      identity,
      identity,
      'bidi',
    );
    peer.port = await new Promise<number>((resolve, reject) =>
      server!.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      ),
    );
    return peer;
  };

  it('holds at most maxInFlightPerStream frames and maxQueuedCalls live calls, every call failing once', async () => {
    const { port } = await testPeer({ frozen: true });
    const MAX_IN_FLIGHT = 16;
    const MAX_QUEUED = 200;
    const transport = (t = new MuxTransport({
      address: `127.0.0.1:${port}`,
      maxInFlightPerStream: MAX_IN_FLIGHT,
      maxQueuedCalls: MAX_QUEUED,
      largePayloadBytes: 1024 * 1024,
    }));
    const payload = Buffer.alloc(48 * 1024, 1);
    const codes = new Map<string, number>();
    let settledTwice = 0;
    let maxFrames = 0;
    let maxQueueEntries = 0;
    const calls: Promise<void>[] = [];
    const started = Date.now();
    let issued = 0;
    while (Date.now() - started < 1_500) {
      for (let i = 0; i < 50; i++) {
        issued++;
        let settled = false;
        calls.push(
          transport
            .invoke({
              method: ECHO,
              request: payload,
              metadata: new grpc.Metadata(),
              deadline: Date.now() + 30,
            })
            .then(
              () => assert.fail('a peer that reads nothing cannot answer'),
              (err: DmtpError) => {
                if (settled) settledTwice++;
                settled = true;
                const key = grpc.status[err.code];
                codes.set(key, (codes.get(key) ?? 0) + 1);
              },
            ),
        );
      }
      const r = transport.retained;
      maxFrames = Math.max(maxFrames, r.frames);
      maxQueueEntries = Math.max(maxQueueEntries, r.queueEntries);
      await sleep(5);
    }
    await Promise.all(calls);
    assert.equal(settledTwice, 0);
    assert.ok(issued > 5_000, `${issued} calls issued`);
    assert.ok((codes.get('DEADLINE_EXCEEDED') ?? 0) > 0, `outcomes ${JSON.stringify([...codes])}`);
    assert.deepEqual(
      [...codes.keys()].filter((k) => k !== 'DEADLINE_EXCEEDED' && k !== 'RESOURCE_EXHAUSTED'),
      [],
      `outcomes ${JSON.stringify([...codes])}`,
    );
    // Without the bounds, both grow with the calls issued (thousands) while the stream stays blocked. Besides the
    // calls' own frames, the CANCELs of calls written before the block wait too (at most one per slot).
    assert.ok(maxFrames <= 2 * MAX_IN_FLIGHT, `${maxFrames} frames held for the stream`);
    assert.ok(
      maxQueueEntries <= 2 * Math.max(MAX_QUEUED, 1024) + 50,
      `${maxQueueEntries} queue entries held`,
    );
    assert.equal(transport.inFlight, 0);
  });

  it('refills the slots of calls that expired unwritten from the queue, so queued calls are not stranded', async () => {
    // This peer reads everything (the stream never blocks) but answers only while `answering`.
    const peer = await testPeer();
    const port = peer.port;
    const transport = (t = new MuxTransport({ address: `127.0.0.1:${port}`, maxInFlightPerStream: 16 }));
    const call = (deadline: number) =>
      transport.invoke({ method: ECHO, request: Buffer.from('x'), metadata: new grpc.Metadata(), deadline });
    await call(Date.now() + 10_000); // answered: the stream is open and accepted
    peer.answering = false;
    // 16 calls on the stream and 200 queued behind them, all with the same deadline: when it passes, the queued
    // ones take the freed slots and expire before they are written (their frames are dropped at the flush).
    const soon = Date.now() + 40;
    const doomed = Array.from({ length: 216 }, () => call(soon).catch((e: DmtpError) => e.code));
    // Calls with time to spare, queued behind them.
    const later = Array.from({ length: 20 }, () =>
      call(Date.now() + 5_000).then(
        () => 'ok',
        (e: DmtpError) => e.message,
      ),
    );
    assert.ok((await Promise.all(doomed)).every((c) => c === grpc.status.DEADLINE_EXCEEDED));
    peer.answering = true;
    assert.deepEqual(new Set(await Promise.all(later)), new Set(['ok']));
  });
});
