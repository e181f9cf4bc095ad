/**
 * `MuxTransport`: the client end of the multiplexed call path for ONE instance. Calls travel as frames over one
 * long-lived `Mux.Call` stream (opened on first use, reopened after a failure with backoff); frames written in
 * the same event-loop turn go out as one MuxBatch. Requests above `largePayloadBytes` go through the unary
 * `fallback` so one large request cannot hold up the small ones behind it.
 *
 * Failure behaviour equals unary: when the stream breaks, every call on it fails exactly once with UNAVAILABLE;
 * `details.notSent` is true only for calls that were never handed to the stream (queued, or waiting for the
 * stream to be accepted). The stream is written only after the server's headers arrived, which the server sends
 * before it reads anything, so "never written" really means "never reached a handler".
 */
import { Client, status as Status, type ClientDuplexStream } from '@grpc/grpc-js';
import { clientTls } from '../tls';
import { backoffMs } from '../../common/backoff';
import { systemClock, type Clock, type Timer } from '../../common/clock';
import { fromStatus, type DmtpError } from '../../common/errors';
import { logger } from '../../common/log';
import { MuxService } from '../../proto/gen/dmtp/v1/mux';
import { withTrailers, type Transport, type TransportCall, type TransportResult } from '../transport';
import { markAnswered, NOT_RUN_TRAILER } from '../not-sent';
import { CallQueue } from './call-queue';
import { decodeBatch, emptyPayload, FrameKind, type DecodedFrame, type Frame } from './codec';
import { DeadlineTracker } from './deadline-tracker';
import { FrameBatcher } from './frame-batcher';
import { mapToMetadata, metadataToMap } from './metadata-map';
import { DEFAULTS, type MuxTransportOptions } from './options';

const log = logger('rpc:mux:client');
const MAX_DEADLINE_MS = 0xffffffff;
const identity = (b: Buffer): Buffer => b;

/** One call on the mux path; it is its own REQUEST frame (one object per call). */
class MuxCall implements Frame {
  callId = 0;
  readonly kind = FrameKind.KIND_REQUEST;
  deadlineMs = 0;
  /** Handed to the stream: it may have reached the server. */
  written = false;
  settled = false;
  /** Settled while its frame still waited in the batcher: the frame holds a slot of `conn` until dropped. */
  held = false;
  conn: MuxConnection | undefined;
  onAbort: (() => void) | undefined;
  resolve!: (r: TransportResult) => void;
  reject!: (e: DmtpError) => void;

  constructor(
    readonly method: string,
    readonly payload: Buffer,
    readonly metadata: Record<string, string> | undefined,
    readonly deadline: number,
    readonly signal: AbortSignal | undefined,
  ) {}
}

/** One opened stream and the calls assigned to it. */
class MuxConnection {
  ready = false;
  dead = false;
  nextId = 1;
  readonly calls = new Map<number, MuxCall>();
  /**
   * Frames of calls settled (expired, cancelled) before the stream took them: they still wait in the batcher,
   * payload and all, until a flush drops them, so they keep their slots. A stream blocked by backpressure thus
   * holds at most maxInFlightPerStream calls' frames; calls beyond wait in the queue (bounded by maxQueuedCalls).
   */
  held = 0;
  readyTimer: Timer | undefined;
  batcher!: FrameBatcher<Frame>;
  constructor(readonly stream: ClientDuplexStream<Buffer, Buffer>) {}

  /** Slots taken: calls on the stream, and frames of settled calls not yet dropped from the batcher. */
  get occupied(): number {
    return this.calls.size + this.held;
  }
}

export class MuxTransport implements Transport {
  readonly kind = 'mux' as const;
  readonly address: string;
  private readonly client: Client;
  private readonly clock: Clock;
  private readonly fallback: Transport | undefined;
  private readonly maxInFlight: number;
  private readonly maxQueued: number;
  private readonly largePayloadBytes: number;
  private readonly maxBatchBytes: number;
  private readonly readyTimeoutMs: number;
  private readonly backoff;
  private readonly queue = new CallQueue<MuxCall>();
  private readonly deadlines: DeadlineTracker<MuxCall>;
  private conn: MuxConnection | undefined;
  private failures = 0;
  private retryAt = 0;
  private active = 0;
  private closed = false;
  /** Streams opened so far (for tests and stats). */
  streamsOpened = 0;

  constructor(o: MuxTransportOptions) {
    this.address = o.address;
    this.fallback = o.fallback;
    this.clock = o.clock ?? systemClock;
    this.maxInFlight = o.maxInFlightPerStream ?? DEFAULTS.maxInFlightPerStream;
    this.maxQueued = o.maxQueuedCalls ?? DEFAULTS.maxQueuedCalls;
    this.largePayloadBytes = o.largePayloadBytes ?? DEFAULTS.largePayloadBytes;
    this.maxBatchBytes = o.maxBatchBytes ?? DEFAULTS.maxBatchBytes;
    this.readyTimeoutMs = o.streamReadyTimeoutMs ?? DEFAULTS.streamReadyTimeoutMs;
    this.backoff = o.reconnectBackoff ?? DEFAULTS.reconnectBackoff;
    const tls = clientTls(`transport to ${o.address}`, o.tls);
    this.client = new Client(o.address, o.credentials ?? tls.credentials, {
      'grpc.max_receive_message_length': -1,
      'grpc.max_send_message_length': -1,
      // Pings only while the stream is open (a call is active): a silent dead connection breaks the stream.
      'grpc.keepalive_time_ms': o.keepaliveMs ?? DEFAULTS.keepaliveMs,
      'grpc.keepalive_timeout_ms': o.keepaliveTimeoutMs ?? DEFAULTS.keepaliveTimeoutMs,
      ...tls.channelOptions,
      ...o.channelOptions,
    });
    this.deadlines = new DeadlineTracker(this.clock, (c) => this.expire(c));
  }

  /** Calls started and not yet settled (queued, on the stream, or on the fallback). */
  get inFlight(): number {
    return this.active;
  }

  /** Calls waiting for a slot on the stream: a client may prefer another instance while this is > 0. */
  get queued(): number {
    return this.queue.size;
  }

  /**
   * What this transport holds in memory for calls: frames not yet handed to the current stream (live or settled)
   * and queue entries (live or settled, not yet swept). Tests: it stays bounded while the peer reads nothing.
   */
  get retained(): { frames: number; queueEntries: number } {
    return { frames: this.conn?.batcher.pending ?? 0, queueEntries: this.queue.retained };
  }

  /**
   * True from a failed stream (the peer died, refused it, broke it) until a new stream is accepted: the peer
   * is likely down, and a caller choosing among peers may prefer another. A clean end (draining) is no failure.
   */
  get broken(): boolean {
    return this.failures > 0;
  }

  /**
   * While `broken`: opens a new stream once the reconnect backoff allows, without any call riding on it, so a
   * peer that came back is seen as healthy again (and one still down backs off further). No-op otherwise.
   */
  probe(): void {
    if (this.closed || this.failures === 0 || this.conn || this.clock.now() < this.retryAt) return;
    this.open();
  }

  invoke(call: TransportCall): Promise<TransportResult> {
    if (this.closed) return Promise.reject(this.error(Status.UNAVAILABLE, 'the transport is closed', true));
    if (this.fallback !== undefined && call.request.length > this.largePayloadBytes)
      return this.viaFallback(call);
    if (call.signal?.aborted)
      return Promise.reject(this.error(Status.CANCELLED, 'the call was cancelled', true));
    const now = this.clock.now();
    if (call.deadline <= now)
      return Promise.reject(this.error(Status.DEADLINE_EXCEEDED, 'deadline exceeded', true));
    if (now < this.retryAt) {
      return Promise.reject(
        this.error(Status.UNAVAILABLE, 'the mux stream is reconnecting after a failure', true),
      );
    }
    if (this.queue.size >= this.maxQueued) {
      return Promise.reject(
        this.error(Status.RESOURCE_EXHAUSTED, `more than ${this.maxQueued} calls queued`, true),
      );
    }
    const c = new MuxCall(
      call.method,
      call.request,
      metadataToMap(call.metadata),
      call.deadline,
      call.signal,
    );
    const p = new Promise<TransportResult>((resolve, reject) => {
      c.resolve = resolve;
      c.reject = reject;
    });
    this.active++;
    this.deadlines.add(c);
    if (c.signal !== undefined) {
      c.onAbort = () => this.cancel(c, Status.CANCELLED, 'the call was cancelled');
      c.signal.addEventListener('abort', c.onAbort, { once: true });
    }
    const conn = this.conn ?? this.open();
    if (conn.ready && conn.occupied < this.maxInFlight && this.queue.size === 0) this.assign(conn, c);
    else this.queue.push(c);
    return p;
  }

  /** Fails every call not yet settled with UNAVAILABLE and releases the channel (and the fallback's). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.fallback?.close();
    // Calls already written may have run: they fail without notSent (a retry could run them twice).
    if (this.conn) this.breakConn(this.conn, 'the transport is closed', true);
    for (const c of this.queue.drain())
      this.settleError(c, Status.UNAVAILABLE, 'the transport is closed', true);
    this.deadlines.clear();
    this.client.close();
  }

  // ---- calls ------------------------------------------------------------------------------------------------

  private async viaFallback(call: TransportCall): Promise<TransportResult> {
    this.active++;
    try {
      return await this.fallback!.invoke(call);
    } finally {
      this.active--;
    }
  }

  private assign(conn: MuxConnection, c: MuxCall): void {
    c.callId = conn.nextId++;
    c.conn = conn;
    conn.calls.set(c.callId, c);
    conn.batcher.push(c);
  }

  /** Moves queued calls onto the stream while it has free slots. */
  private pump(conn: MuxConnection): void {
    while (conn.occupied < this.maxInFlight && this.queue.size > 0) {
      const c = this.queue.shift();
      if (c === undefined) break;
      this.assign(conn, c);
    }
  }

  /** Runs just before a frame is encoded: computes the remaining deadline, drops what settled meanwhile. */
  private prepare(f: Frame): boolean {
    if (!(f instanceof MuxCall)) return true; // CANCEL
    if (f.settled) return this.drop(f);
    if (f.deadline !== Infinity) {
      const left = Math.ceil(f.deadline - this.clock.now());
      if (left <= 0) {
        this.cancel(f, Status.DEADLINE_EXCEEDED, 'deadline exceeded');
        return this.drop(f);
      }
      f.deadlineMs = Math.min(left, MAX_DEADLINE_MS);
    }
    return true;
  }

  /** A settled call's frame leaves the batcher unwritten: its slot is free again, for a queued call. */
  private drop(c: MuxCall): false {
    if (c.held) {
      c.held = false;
      const conn = c.conn!;
      conn.held--;
      // Pushed frames join the next batch (the batcher swapped this one out before preparing it).
      if (conn === this.conn && conn.ready && this.queue.size > 0) this.pump(conn);
    }
    return false;
  }

  private written(f: Frame): void {
    if (f instanceof MuxCall) f.written = true;
  }

  private expire(c: MuxCall): void {
    this.cancel(c, Status.DEADLINE_EXCEEDED, 'deadline exceeded');
  }

  /** Ends a call early (cancelled or expired): the server is told with a CANCEL when it may have the call. */
  private cancel(c: MuxCall, code: Status, details: string): void {
    if (c.settled) return;
    const conn = c.conn;
    if (conn === undefined) this.queue.forget();
    else if (conn.calls.get(c.callId) === c) {
      conn.calls.delete(c.callId);
      if (c.written) {
        if (!conn.dead) conn.batcher.push({ callId: c.callId, kind: FrameKind.KIND_CANCEL });
      } else if (!conn.dead) {
        c.held = true;
        conn.held++;
      }
    }
    this.settleError(c, code, details, !c.written);
    if (conn !== undefined && conn === this.conn && conn.ready) this.pump(conn);
  }

  private settle(c: MuxCall): boolean {
    if (c.settled) return false;
    c.settled = true;
    this.active--;
    this.deadlines.delete(c);
    if (c.onAbort !== undefined) c.signal!.removeEventListener('abort', c.onAbort);
    return true;
  }

  private settleError(c: MuxCall, code: Status, details: string, notSent: boolean): void {
    if (this.settle(c)) c.reject(this.error(code, details, notSent, c.method));
  }

  private error(code: Status, details: string, notSent: boolean, method?: string): DmtpError {
    return fromStatus(code, details, {
      details: notSent ? { address: this.address, method, notSent: true } : { address: this.address, method },
    });
  }

  // ---- the stream -------------------------------------------------------------------------------------------

  private open(): MuxConnection {
    const stream = this.client.makeBidiStreamRequest<Buffer, Buffer>(
      MuxService.call.path,
      identity,
      identity,
    );
    const conn = new MuxConnection(stream);
    this.streamsOpened++;
    conn.batcher = new FrameBatcher<Frame>({
      maxBatchBytes: this.maxBatchBytes,
      write: (batch) => stream.write(batch),
      prepare: (f) => this.prepare(f),
      written: (f) => this.written(f),
    });
    conn.readyTimer = this.clock.setTimeout(
      () => this.breakConn(conn, `the mux stream was not accepted within ${this.readyTimeoutMs} ms`, true),
      this.readyTimeoutMs,
    );
    stream.on('metadata', () => {
      if (conn.dead) return;
      conn.ready = true;
      conn.readyTimer?.cancel();
      this.failures = 0;
      this.pump(conn);
    });
    stream.on('data', (batch: Buffer) => this.onData(conn, batch));
    stream.on('drain', () => conn.batcher.drained());
    stream.on('error', (err: { code?: number; details?: string; message?: string }) =>
      this.breakConn(conn, `the mux stream failed: ${err.details ?? err.message}`, true),
    );
    stream.on('status', (s: { code: number; details: string }) =>
      this.breakConn(conn, `the mux stream ended: ${s.details || Status[s.code]}`, s.code !== Status.OK),
    );
    this.conn = conn;
    return conn;
  }

  private onData(conn: MuxConnection, batch: Buffer): void {
    if (conn.dead) return;
    let frames: DecodedFrame[];
    try {
      frames = decodeBatch(batch);
    } catch (err) {
      this.breakConn(conn, `unreadable MuxBatch from the server: ${(err as Error).message}`, true);
      return;
    }
    for (let i = 0; i < frames.length; i++) {
      const f = frames[i];
      if (f.kind !== FrameKind.KIND_RESPONSE) continue;
      const c = conn.calls.get(f.callId);
      if (c === undefined) continue; // cancelled or expired here meanwhile: dropped, as the contract says
      conn.calls.delete(f.callId);
      if (!this.settle(c)) continue;
      if (f.error !== undefined) {
        c.reject(this.error(Status.INTERNAL, `malformed response frame: ${f.error}`, false, c.method));
      } else if (!f.statusCode) {
        c.resolve({ response: f.payload ?? emptyPayload(), trailers: mapToMetadata(f.metadata) });
      } else {
        // The server marks a refusal sent before any handler ran: such a call may go elsewhere.
        const notRun = f.metadata?.[NOT_RUN_TRAILER] === '1';
        const err = markAnswered(this.error(f.statusCode, f.statusDetails ?? '', notRun, c.method));
        c.reject(f.metadata ? withTrailers(err, mapToMetadata(f.metadata)) : err);
      }
    }
    if (this.queue.size > 0) this.pump(conn);
  }

  /**
   * The stream is over: each call on it fails once with UNAVAILABLE (notSent when it was never written), as do
   * the calls queued for it; the next call opens a new stream, after a backoff when this one failed.
   */
  private breakConn(conn: MuxConnection, reason: string, failed: boolean): void {
    if (conn.dead) return;
    conn.dead = true;
    conn.readyTimer?.cancel();
    if (this.conn === conn) this.conn = undefined;
    const calls = [...conn.calls.values()];
    conn.calls.clear();
    conn.batcher.takePending();
    // A stream that ended cleanly (server draining) is no failure: the next call simply opens a new one.
    if (failed && !this.closed) {
      this.failures++;
      this.retryAt = this.clock.now() + backoffMs(this.failures, this.backoff);
      log.info('mux stream broke', { address: this.address, reason, calls: calls.length + this.queue.size });
    }
    conn.stream.cancel();
    // A server ends a stream cleanly only once it has answered every request it read: what is still waiting was
    // never read, so it never ran. After a failure, a written call may have run.
    for (const c of calls) this.settleError(c, Status.UNAVAILABLE, reason, !failed || !c.written);
    for (const c of this.queue.drain()) this.settleError(c, Status.UNAVAILABLE, reason, true);
  }
}
