/**
 * The server end of one multiplexed stream: decodes batches, dispatches each REQUEST through the same
 * `invokeHandler` as a unary call, and answers with RESPONSE frames coalesced per event-loop turn.
 */
import { Metadata, status as Status, type ServerDuplexStream } from '@grpc/grpc-js';
import { CancelledError, DeadlineExceededError } from '../../common/errors';
import type { Clock } from '../../common/clock';
import { logger } from '../../common/log';
import { MuxBatch } from '../../proto/gen/dmtp/v1/mux';
import {
  invokeHandler,
  responseBytes,
  type MethodEntry,
  type MethodLookup,
  type ServerMiddleware,
} from '../middleware';
import type { CallAdmission } from '../admission';
import { NOT_RUN_TRAILER, serverStatus } from '../not-sent';
import { decodeBatch, FrameKind, MuxDecodeError, type DecodedFrame, type Frame } from './codec';
import { DeadlineTracker } from './deadline-tracker';
import { FrameBatcher } from './frame-batcher';
import { MuxIncomingCall } from './incoming-call';

const log = logger('rpc:mux:server');

export interface ServerStreamContext {
  lookup: MethodLookup;
  middleware: ServerMiddleware[];
  maxInFlight: number;
  maxRequestBytes: number;
  maxResponseBytes: number;
  maxBatchBytes: number;
  clock: Clock;
  /** True while the service drains: new requests are refused with UNAVAILABLE. */
  draining(): boolean;
  /** The server's limit over both paths (`maxConcurrentCalls`). */
  admission: CallAdmission;
}

const NOT_RUN: Record<string, string> = Object.freeze({ [NOT_RUN_TRAILER]: '1' }) as Record<string, string>;

type RawStream = ServerDuplexStream<Buffer | MuxBatch, Buffer | MuxBatch>;

export class MuxServerStream {
  private readonly calls = new Map<number, MuxIncomingCall>();
  /** Handlers not yet settled, including those of calls already cancelled or expired (they may run on). */
  private running = 0;
  private readonly batcher: FrameBatcher;
  private readonly deadlines: DeadlineTracker<MuxIncomingCall>;
  private readonly peer: string;
  /** The service was registered with the generated definition: messages are MuxBatch objects, not bytes. */
  private objectMode = false;
  private clientEnded = false;
  private closed = false;
  /** Resolves once the stream is over (for drain()). */
  readonly finished: Promise<void>;
  private resolveFinished!: () => void;

  constructor(
    private readonly stream: RawStream,
    private readonly ctx: ServerStreamContext,
  ) {
    this.finished = new Promise((resolve) => (this.resolveFinished = resolve));
    this.peer = stream.getPeer();
    this.batcher = new FrameBatcher({
      maxBatchBytes: ctx.maxBatchBytes,
      write: (batch) => this.write(batch),
    });
    this.deadlines = new DeadlineTracker(ctx.clock, (call) => this.expire(call));
    // Headers go out at once: they tell the client the stream is accepted, so what it writes from then on is
    // what may reach a handler (and what it queued before certainly did not).
    stream.sendMetadata(new Metadata());
    stream.on('data', (data: Buffer | MuxBatch) => this.onData(data));
    stream.on('end', () => {
      this.clientEnded = true;
      this.maybeEnd();
    });
    stream.on('drain', () => {
      this.batcher.drained();
      if (!this.batcher.isBlocked) stream.resume();
      // A drain that waited for these last answers ends the stream now that they are written.
      if (this.clientEnded && this.calls.size === 0) this.maybeEnd();
    });
    stream.on('cancelled', () => this.teardown(new CancelledError('the client cancelled the stream')));
    stream.on('error', (err) => this.teardown(err));
    stream.on('close', () => this.teardown(new CancelledError('the stream closed')));
  }

  get inFlight(): number {
    return this.calls.size;
  }

  /** Stops reading new requests' effects: ends the stream once what is in flight is answered. */
  drain(): void {
    this.clientEnded = true;
    this.maybeEnd();
  }

  private write(batch: Buffer): boolean {
    if (this.closed) return true;
    const ok = this.stream.write(this.objectMode ? MuxBatch.decode(batch) : batch);
    // A peer that does not read: stop reading its requests too until the responses drain.
    if (!ok) this.stream.pause();
    return ok;
  }

  private onData(data: Buffer | MuxBatch): void {
    if (this.closed) return;
    let frames: DecodedFrame[];
    if (Buffer.isBuffer(data)) {
      try {
        frames = decodeBatch(data);
      } catch (err) {
        const details = `unreadable MuxBatch: ${(err as MuxDecodeError).message}`;
        log.warn('closing mux stream', { peer: this.peer, details });
        this.closeWith(Status.INVALID_ARGUMENT, details);
        return;
      }
    } else {
      this.objectMode = true;
      frames = data.frames.map((f) => ({
        ...f,
        metadata: Object.keys(f.metadata).length > 0 ? f.metadata : undefined,
      }));
    }
    for (let i = 0; i < frames.length; i++) this.onFrame(frames[i]);
  }

  private onFrame(f: DecodedFrame): void {
    if (f.error !== undefined || f.callId === 0 || f.kind === FrameKind.KIND_UNSPECIFIED) {
      if (f.callId !== 0)
        this.refuse(f.callId, Status.INVALID_ARGUMENT, `malformed mux frame: ${f.error ?? 'no kind'}`);
      else log.debug('dropping mux frame without a call id', { peer: this.peer, error: f.error });
      return;
    }
    switch (f.kind) {
      case FrameKind.KIND_REQUEST:
        this.onRequest(f);
        return;
      case FrameKind.KIND_CANCEL: {
        const call = this.calls.get(f.callId);
        if (call === undefined) return; // already answered, or never known: nothing to do
        this.finish(call);
        call.abort(new CancelledError('the caller cancelled the call'));
        return;
      }
      default:
        this.refuse(f.callId, Status.INVALID_ARGUMENT, `a client may not send mux frames of kind ${f.kind}`);
    }
  }

  private onRequest(f: DecodedFrame): void {
    const id = f.callId;
    if (this.calls.has(id)) {
      // Not marked as never run: the caller's call with this id is running.
      this.answer(id, Status.INVALID_ARGUMENT, `call id ${id} is already in flight on this stream`);
      return;
    }
    if (this.clientEnded || this.ctx.draining()) {
      this.refuse(id, Status.UNAVAILABLE, 'the server is shutting down');
      return;
    }
    // Handlers still running count, answered or not: a cancelled call's handler may not stop at once, and
    // CANCEL must not be a way around the limit.
    if (this.running >= this.ctx.maxInFlight) {
      this.refuse(
        id,
        Status.RESOURCE_EXHAUSTED,
        `more than ${this.ctx.maxInFlight} calls in flight on this stream`,
      );
      return;
    }
    const payload = f.payload;
    if (payload !== undefined && payload.length > this.ctx.maxRequestBytes) {
      this.refuse(
        id,
        Status.RESOURCE_EXHAUSTED,
        `request of ${payload.length} bytes is above the ${this.ctx.maxRequestBytes} limit`,
      );
      return;
    }
    const method = f.method ?? '';
    const entry = this.ctx.lookup(method);
    if (entry === undefined) {
      this.refuse(id, Status.UNIMPLEMENTED, `unknown method ${method || '(none)'}`);
      return;
    }
    // Before the request is decoded: under overload, a refused call costs no decoding.
    const refused = this.ctx.admission.enter(entry.unlimited, method);
    if (refused) {
      this.refuse(id, refused.code, refused.message);
      return;
    }
    const deadline = f.deadlineMs ? this.ctx.clock.now() + f.deadlineMs : Infinity;
    const call = new MuxIncomingCall(id, method, deadline, this.peer, f.metadata, this.ctx.maxResponseBytes);
    try {
      call.request = entry.deserialize(payload ?? Buffer.alloc(0));
    } catch (err) {
      this.ctx.admission.leave();
      this.refuse(id, Status.INVALID_ARGUMENT, `cannot deserialize the request: ${(err as Error).message}`);
      return;
    }
    this.calls.set(id, call);
    this.deadlines.add(call);
    this.run(entry, call);
  }

  private run(entry: MethodEntry, call: MuxIncomingCall): void {
    let p: Promise<unknown>;
    try {
      p = invokeHandler(entry, call, this.ctx.middleware, call);
    } catch (err) {
      this.ctx.admission.leave();
      this.fail(call, err);
      return;
    }
    this.running++;
    p.then(
      (res) => {
        this.running--;
        this.ctx.admission.leave();
        this.succeed(entry, call, res);
      },
      (err) => {
        this.running--;
        this.ctx.admission.leave();
        this.fail(call, err);
      },
    );
  }

  private succeed(entry: MethodEntry, call: MuxIncomingCall, res: unknown): void {
    if (call.done) return;
    let payload: Buffer;
    try {
      // Encoded (and held to maxResponseBytes) inside the chain, so the middleware saw a failure too; again here
      // only when a middleware answered another response.
      payload = responseBytes(entry, call, res);
    } catch (err) {
      this.fail(call, err);
      return;
    }
    this.finish(call);
    this.send({ callId: call.callId, kind: FrameKind.KIND_RESPONSE, payload, metadata: call.trailerMap() });
  }

  private fail(call: MuxIncomingCall, err: unknown): void {
    if (call.done) return;
    this.finish(call);
    const s = serverStatus(err);
    this.send({
      callId: call.callId,
      kind: FrameKind.KIND_RESPONSE,
      statusCode: s.code,
      statusDetails: s.details,
      metadata: call.trailerMap(),
    });
  }

  private expire(call: MuxIncomingCall): void {
    if (call.done) return;
    this.finish(call);
    call.abort(new DeadlineExceededError('deadline exceeded'));
    this.answer(call.callId, Status.DEADLINE_EXCEEDED, 'deadline exceeded');
  }

  private finish(call: MuxIncomingCall): void {
    call.done = true;
    this.calls.delete(call.callId);
    this.deadlines.delete(call);
  }

  private answer(callId: number, code: Status, details: string): void {
    this.send({ callId, kind: FrameKind.KIND_RESPONSE, statusCode: code, statusDetails: details });
  }

  /** An answer for a request no handler saw: marked (NOT_RUN_TRAILER), so the caller may send it elsewhere. */
  private refuse(callId: number, code: Status, details: string): void {
    this.send({
      callId,
      kind: FrameKind.KIND_RESPONSE,
      statusCode: code,
      statusDetails: details,
      metadata: NOT_RUN,
    });
  }

  private send(frame: Frame): void {
    if (this.closed) return;
    this.batcher.push(frame);
    if (this.clientEnded && this.calls.size === 0) setImmediate(() => this.maybeEnd());
  }

  private maybeEnd(): void {
    if (this.closed || !this.clientEnded || this.calls.size > 0) return;
    if (this.batcher.pending > 0) {
      this.batcher.flush();
      if (this.batcher.pending > 0) return; // blocked: 'drain' flushes, then the last send ends it
    }
    this.closed = true;
    this.stream.end();
    this.cleanup();
  }

  private closeWith(code: Status, details: string): void {
    if (this.closed) return;
    this.stream.emit('error', { code, details });
    this.teardown(new CancelledError(details));
  }

  /** The stream is gone: every call still running is cancelled for its handler; nothing more is sent. */
  private teardown(reason: Error): void {
    this.closed = true;
    for (const call of this.calls.values()) {
      call.done = true;
      call.abort(reason instanceof Error ? reason : new CancelledError(String(reason)));
    }
    this.calls.clear();
    this.batcher.takePending();
    this.cleanup();
  }

  private cleanup(): void {
    this.deadlines.clear();
    this.resolveFinished();
  }
}
