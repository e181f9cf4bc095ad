import { strict as assert } from 'node:assert';
import * as grpc from '@grpc/grpc-js';
import { DmtpError } from '../../../../common/errors';
import { MuxFrame_Kind, MuxService } from '../../../../proto/gen/dmtp/v1/mux';
import type { IncomingCall, ServerMiddleware } from '../../../../rpc/middleware';
import { createMuxService, encodeBatch, MuxTransport, type Frame } from '../../../../rpc/mux';
import { MAX_MESSAGE_BYTES, type TransportCall } from '../../../../rpc/transport';
import {
  ECHO,
  echoMethods,
  FAIL,
  SIZED,
  SLOW,
  STUBBORN,
  startEchoServer,
  TestUnaryTransport,
  type EchoServer,
} from '../../../support/mux-echo';
import { RawMuxStream } from '../../../support/mux-raw';

const { status: Status } = grpc;

function call(method: string, request: string | Buffer, extra: Partial<TransportCall> = {}): TransportCall {
  return {
    method,
    request: typeof request === 'string' ? Buffer.from(request) : request,
    metadata: new grpc.Metadata(),
    deadline: Date.now() + 5_000,
    ...extra,
  };
}

async function rejection(p: Promise<unknown>): Promise<DmtpError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof DmtpError, `expected a DmtpError, got ${err}`);
    return err;
  }
  assert.fail('expected the call to fail');
}

describe('rpc/mux: calls over one multiplexed stream', () => {
  let server: EchoServer;
  const transports: MuxTransport[] = [];
  const raws: RawMuxStream[] = [];
  const transport = (o: Partial<ConstructorParameters<typeof MuxTransport>[0]> = {}) => {
    const t = new MuxTransport({ address: server.address, ...o });
    transports.push(t);
    return t;
  };
  const raw = () => {
    const r = new RawMuxStream(server.address);
    raws.push(r);
    return r;
  };
  const seen: IncomingCall[] = [];
  /** Methods whose call failed as the middleware saw it. */
  const failedInChain: string[] = [];
  const recorder: ServerMiddleware = async (c, next) => {
    seen.push(c);
    const res = await next().catch((err: unknown) => {
      failedInChain.push(c.method);
      throw err;
    });
    if (c.metadata.get('x-mw').length > 0) c.trailers.set('x-mw-saw', String(c.metadata.get('x-mw')[0]));
    return res;
  };

  beforeEach(async () => {
    seen.length = 0;
    failedInChain.length = 0;
    server = await startEchoServer([recorder]);
  });

  afterEach(async () => {
    for (const t of transports.splice(0)) t.close();
    for (const r of raws.splice(0)) r.close();
    await server.stop();
  });

  it('echoes many concurrent calls over a single stream', async () => {
    const t = transport();
    const results = await Promise.all(
      Array.from({ length: 300 }, (_, i) => t.invoke(call(ECHO, `msg-${i}`))),
    );
    results.forEach((r, i) => assert.equal(r.response.toString(), `msg-${i}`));
    assert.equal(t.streamsOpened, 1);
    assert.equal(t.inFlight, 0);
  });

  it('carries metadata to the handler and trailers back, text and binary', async () => {
    const t = transport();
    const md = new grpc.Metadata();
    md.set('x-trailer', 'round-trip');
    md.set('x-bin-bin', Buffer.from([0, 1, 2, 250]));
    const r = await t.invoke(call(ECHO, 'md', { metadata: md }));
    assert.equal(r.trailers.get('x-trailer-back')[0], 'round-trip');
    assert.deepEqual(r.trailers.get('x-bin-back-bin')[0], Buffer.from([0, 1, 2, 250]));
  });

  it('runs the server middleware around the handler with the same call a unary handler would see', async () => {
    const t = transport();
    const md = new grpc.Metadata();
    md.set('x-mw', 'hello');
    const before = Date.now();
    const r = await t.invoke(call(ECHO, 'mw', { metadata: md, deadline: before + 3_000 }));
    assert.equal(seen.length, 1);
    const c = seen[0];
    assert.equal(c.method, ECHO);
    assert.equal((c.request as Buffer).toString(), 'mw');
    assert.ok(
      c.deadline > before && c.deadline <= before + 3_100,
      `deadline ${c.deadline - before} ms ahead`,
    );
    assert.match(c.peer, /127\.0\.0\.1/);
    assert.equal(c.signal.aborted, false);
    assert.equal(r.trailers.get('x-mw-saw')[0], 'hello');
  });

  it('closing the transport fails a call already sent without notSent, and a queued one with it', async () => {
    // Before, close() marked every call on the stream "never sent": the client's retry ran a non-idempotent call
    // a second time elsewhere, and a Commit in flight at shutdown was reported aborted.
    const t = transport({ maxInFlightPerStream: 1 });
    const sent = t.invoke(call(SLOW, '2000'));
    const queued = t.invoke(call(ECHO, 'waits for the slot'));
    await until(() => seen.length === 1); // the slow call reached the handler
    t.close();
    const [a, b] = [await rejection(sent), await rejection(queued)];
    assert.equal(a.code, Status.UNAVAILABLE);
    assert.notEqual(a.details.notSent, true, 'it ran');
    assert.equal(b.details.notSent, true, 'never written');
  });

  it('maps a handler error to its status, as unary would', async () => {
    const err = await rejection(transport().invoke(call(FAIL, 'x')));
    assert.equal(err.code, Status.FAILED_PRECONDITION);
    assert.equal(err.message, 'told to fail');
    assert.equal(err.details.address, server.address);
    assert.notEqual(err.details.notSent, true);
  });

  it('fails a call at its deadline with DEADLINE_EXCEEDED, cancels it on the server, and keeps the stream', async () => {
    const t = transport();
    const err = await rejection(t.invoke(call(SLOW, '5000', { deadline: Date.now() + 200 })));
    assert.equal(err.code, Status.DEADLINE_EXCEEDED);
    const r = await t.invoke(call(ECHO, 'still-there'));
    assert.equal(r.response.toString(), 'still-there');
    await until(() => server.log.aborted.length === 1);
    assert.equal(t.streamsOpened, 1);
  });

  it('cancels one call through its AbortSignal: CANCELLED here, the handler is aborted there', async () => {
    const t = transport();
    const ac = new AbortController();
    const other = t.invoke(call(SLOW, '300'));
    const p = t.invoke(call(SLOW, '5000', { signal: ac.signal }));
    await until(() => seen.length === 2);
    ac.abort();
    const err = await rejection(p);
    assert.equal(err.code, Status.CANCELLED);
    await until(() => server.log.aborted.includes('CancelledError'));
    assert.equal((await other).response.toString(), 'slow-done');
  });

  it('answers an unknown method with UNIMPLEMENTED for that call only', async () => {
    const t = transport();
    const [bad, good] = await Promise.allSettled([
      t.invoke(call('/nope.Service/Missing', 'x')),
      t.invoke(call(ECHO, 'fine')),
    ]);
    assert.equal(bad.status, 'rejected');
    assert.equal(((bad as PromiseRejectedResult).reason as DmtpError).code, Status.UNIMPLEMENTED);
    assert.equal(good.status, 'fulfilled');
  });

  it('answers a request above the server limit with RESOURCE_EXHAUSTED and keeps the stream', async () => {
    await server.stop();
    server = await startEchoServer([], { maxRequestBytes: 1024 });
    const t = transport();
    const err = await rejection(t.invoke(call(ECHO, Buffer.alloc(2048))));
    assert.equal(err.code, Status.RESOURCE_EXHAUSTED);
    assert.equal((await t.invoke(call(ECHO, 'small'))).response.toString(), 'small');
  });

  it('delivers a response as large as the unary path does (16 MiB) over the stream, beside small calls', async () => {
    const t = transport();
    const size = MAX_MESSAGE_BYTES - 1024; // Before, the stream refused anything above 4 MiB − 64 KiB.
    const [big, small] = await Promise.all([
      t.invoke(call(SIZED, String(size))),
      t.invoke(call(ECHO, 'small')),
    ]);
    assert.equal(big.response.length, size);
    assert.equal(big.response[size - 1], 5);
    assert.equal(small.response.toString(), 'small');
    assert.deepEqual(
      seen.map((c) => c.method),
      [SIZED, ECHO],
      'both went through the mux dispatcher',
    );
  });

  it('answers a response above the unary limit with RESOURCE_EXHAUSTED naming both sizes, and keeps the stream', async () => {
    const t = transport();
    const err = await rejection(t.invoke(call(SIZED, String(MAX_MESSAGE_BYTES + 1))));
    assert.equal(err.code, Status.RESOURCE_EXHAUSTED);
    assert.match(
      err.message,
      new RegExp(`response of ${MAX_MESSAGE_BYTES + 1} bytes is above the ${MAX_MESSAGE_BYTES} limit`),
    );
    // Held to the limit inside the chain: a transaction's middleware undoes the call, as for a handler that threw.
    assert.deepEqual(failedInChain, [SIZED], 'the middleware saw the call fail');
    assert.equal((await t.invoke(call(ECHO, 'after'))).response.toString(), 'after');
    assert.equal(t.streamsOpened, 1);
  });

  it('refuses calls beyond the server in-flight limit with RESOURCE_EXHAUSTED', async () => {
    await server.stop();
    server = await startEchoServer([], { maxInFlightPerStream: 2 });
    const t = transport();
    const outcomes = await Promise.allSettled([
      t.invoke(call(SLOW, '200')),
      t.invoke(call(SLOW, '200')),
      t.invoke(call(SLOW, '200')),
    ]);
    assert.deepEqual(
      outcomes.map((o) => o.status),
      ['fulfilled', 'fulfilled', 'rejected'],
    );
    const refused = (outcomes[2] as PromiseRejectedResult).reason as DmtpError;
    assert.equal(refused.code, Status.RESOURCE_EXHAUSTED);
    assert.equal(refused.details.notSent, true, 'no handler saw it');
  });

  it('queues calls beyond its own in-flight limit and runs them all', async () => {
    const t = transport({ maxInFlightPerStream: 4 });
    const ps = Array.from({ length: 50 }, (_, i) => t.invoke(call(ECHO, `q${i}`)));
    assert.equal(t.inFlight, 50);
    assert.ok(t.queued > 0);
    const rs = await Promise.all(ps);
    rs.forEach((r, i) => assert.equal(r.response.toString(), `q${i}`));
    assert.equal(t.inFlight, 0);
  });

  it('sends a large request through the unary fallback, not the stream', async () => {
    const fallback = new TestUnaryTransport(server.address);
    try {
      const t = transport({ fallback, largePayloadBytes: 64 * 1024 });
      const big = Buffer.alloc(100 * 1024, 3);
      const [r, small] = await Promise.all([t.invoke(call(ECHO, big)), t.invoke(call(ECHO, 'small'))]);
      assert.deepEqual(r.response, big);
      assert.equal(small.response.toString(), 'small');
      assert.equal(fallback.calls, 1);
      assert.equal(seen.length, 1, 'only the small call went through the mux dispatcher');
    } finally {
      fallback.close();
    }
  });

  it('fails calls to an address nobody serves with UNAVAILABLE, notSent', async () => {
    await server.stop();
    const t = transport();
    const err = await rejection(t.invoke(call(ECHO, 'x')));
    assert.equal(err.code, Status.UNAVAILABLE);
    assert.equal(err.details.notSent, true);
    const again = await rejection(t.invoke(call(ECHO, 'x')));
    assert.equal(again.details.notSent, true, 'while backing off, calls fail fast and unsent');
    server = await startEchoServer([recorder]);
  });

  it('drains: calls in flight finish, the stream ends cleanly, new calls are refused with UNAVAILABLE', async () => {
    const t = transport();
    assert.equal((await t.invoke(call(ECHO, 'one'))).response.toString(), 'one');
    const slow = t.invoke(call(SLOW, '200'));
    await until(() => server.mux.inFlightCount() === 1);
    await server.mux.drain();
    assert.equal((await slow).response.toString(), 'slow-done');
    assert.equal(server.mux.streamCount(), 0);
    // Until the client has seen the stream end, a call may still be written to it; either way it is refused.
    const deadline = Date.now() + 3_000;
    while (t.streamsOpened < 2 && Date.now() < deadline) {
      const err = await rejection(t.invoke(call(ECHO, 'late')));
      assert.equal(err.code, Status.UNAVAILABLE);
      assert.equal(err.details.notSent, true, 'refused unrun: a non-idempotent call may go elsewhere');
    }
    assert.equal(t.streamsOpened, 2, 'a cleanly ended stream is reopened, without backoff');
    const err = await rejection(t.invoke(call(ECHO, 'late')));
    assert.equal(err.code, Status.UNAVAILABLE);
    assert.match(err.message, /shutting down|ended/);
    assert.equal(err.details.notSent, true);
  });

  it('also serves when registered with the generated MuxService definition (decoded messages)', async () => {
    const methods = echoMethods();
    const other = new grpc.Server();
    other.addService(
      MuxService,
      createMuxService((p) => methods.get(p), [recorder]),
    );
    const port = await new Promise<number>((resolve, reject) =>
      other.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) =>
        e ? reject(e) : resolve(p),
      ),
    );
    try {
      const t = new MuxTransport({ address: `127.0.0.1:${port}` });
      transports.push(t);
      const md = new grpc.Metadata();
      md.set('x-trailer', 'generated');
      const r = await t.invoke(call(ECHO, 'via-generated', { metadata: md }));
      assert.equal(r.response.toString(), 'via-generated');
      assert.equal(r.trailers.get('x-trailer-back')[0], 'generated');
    } finally {
      other.forceShutdown();
    }
  });

  describe('bad input on a raw stream', () => {
    const frame = (f: Frame) => encodeBatch([f]);
    const echoFrame = (callId: number, text = 'ok'): Frame => ({
      callId,
      kind: MuxFrame_Kind.KIND_REQUEST,
      method: ECHO,
      payload: Buffer.from(text),
    });

    it('answers a frame without a kind with INVALID_ARGUMENT and keeps serving the stream', async () => {
      const r = raw();
      r.write(frame({ callId: 4, kind: MuxFrame_Kind.KIND_UNSPECIFIED, method: ECHO }));
      r.write(frame({ callId: 0, kind: MuxFrame_Kind.KIND_REQUEST, method: ECHO }));
      r.write(frame(echoFrame(5)));
      await r.until(() => r.frame(4) !== undefined && r.frame(5) !== undefined);
      assert.equal(r.frame(4)!.statusCode, Status.INVALID_ARGUMENT);
      assert.equal(r.frame(5)!.statusCode, undefined);
      assert.equal(r.frame(5)!.payload!.toString(), 'ok');
      assert.equal(r.frames.length, 2, 'a frame without a call id gets no answer');
    });

    it('answers a frame with a malformed body but a readable call id with INVALID_ARGUMENT', async () => {
      const r = raw();
      const body = Buffer.from([0x08, 0x09, 0x1a, 0x40]); // call 9, then a method field running past the frame
      r.write(Buffer.concat([Buffer.from([0x0a, body.length]), body]));
      await r.until(() => r.frame(9) !== undefined);
      assert.equal(r.frame(9)!.statusCode, Status.INVALID_ARGUMENT);
    });

    it('closes the stream with INVALID_ARGUMENT on a batch it cannot read', async () => {
      const r = raw();
      r.write(Buffer.from([0x0a, 0x7f, 0x01]));
      await r.until(() => r.status !== undefined);
      assert.equal(r.status!.code, Status.INVALID_ARGUMENT);
    });

    it('answers a duplicate in-flight call id with INVALID_ARGUMENT', async () => {
      const r = raw();
      r.write(encodeBatch([{ ...echoFrame(7), method: SLOW, payload: Buffer.from('300') }, echoFrame(7)]));
      await r.until(() => r.frames.length === 1);
      assert.equal(r.frames[0].statusCode, Status.INVALID_ARGUMENT);
      assert.match(r.frames[0].statusDetails!, /already in flight/);
    });

    it('ignores a CANCEL for an unknown call id and refuses a RESPONSE from the client', async () => {
      const r = raw();
      r.write(frame({ callId: 99, kind: MuxFrame_Kind.KIND_CANCEL }));
      r.write(frame({ callId: 98, kind: MuxFrame_Kind.KIND_RESPONSE, payload: Buffer.from('?') }));
      r.write(frame(echoFrame(1, 'after')));
      await r.until(() => r.frame(1) !== undefined && r.frame(98) !== undefined);
      assert.equal(r.frame(98)!.statusCode, Status.INVALID_ARGUMENT);
      assert.equal(r.frame(99), undefined);
      assert.equal(r.frame(1)!.payload!.toString(), 'after');
    });

    it('stops reading from a peer that never reads its responses, and catches up once it does', async () => {
      const r = raw();
      r.pause();
      const big = Buffer.alloc(64 * 1024, 1);
      const N = 400; // 25 MiB of responses: far beyond what the HTTP/2 windows buffer
      let refused = 0;
      for (let id = 1; id <= N; id++) {
        if (!r.write(frame({ callId: id, kind: MuxFrame_Kind.KIND_REQUEST, method: ECHO, payload: big })))
          refused++;
      }
      await new Promise((res) => setTimeout(res, 500));
      assert.ok(refused > 0, 'the client saw backpressure: the server stopped reading');
      assert.ok(
        seen.length < N,
        `the server dispatched only ${seen.length} of ${N} while its responses waited`,
      );
      r.resume();
      await r.until(() => r.frames.length === N, 20_000);
      assert.ok(r.frames.every((f) => f.statusCode === undefined && f.payload!.length === big.length));
    });

    it('counts a cancelled call against the in-flight limit until its handler really ends', async () => {
      await server.stop();
      server = await startEchoServer([], { maxInFlightPerStream: 2 });
      const r = raw();
      const stubborn = (callId: number): Frame => ({
        ...echoFrame(callId),
        method: STUBBORN,
        payload: Buffer.from('400'),
      });
      const cancel = (callId: number): Frame => ({ callId, kind: MuxFrame_Kind.KIND_CANCEL });
      r.write(encodeBatch([stubborn(1), cancel(1), stubborn(2), cancel(2), echoFrame(3)]));
      await r.until(() => r.frame(3) !== undefined);
      assert.equal(r.frame(3)!.statusCode, Status.RESOURCE_EXHAUSTED, 'two handlers still run');
      await new Promise((res) => setTimeout(res, 600)); // both handlers have ended
      r.write(frame(echoFrame(4, 'room again')));
      await r.until(() => r.frame(4) !== undefined);
      assert.equal(r.frame(4)!.payload!.toString(), 'room again');
      assert.equal(r.frame(1), undefined, 'a cancelled call gets no answer, even when its handler ends');
    });

    it('cancels a call on CANCEL: the handler is aborted and no response follows', async () => {
      const r = raw();
      r.write(frame({ ...echoFrame(3), method: SLOW, payload: Buffer.from('5000') }));
      await until(() => seen.length === 1);
      r.write(frame({ callId: 3, kind: MuxFrame_Kind.KIND_CANCEL }));
      await until(() => server.log.aborted.includes('CancelledError'));
      r.write(frame(echoFrame(4)));
      await r.until(() => r.frame(4) !== undefined);
      assert.equal(r.frame(3), undefined);
    });
  });
});

async function until(pred: () => boolean, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
