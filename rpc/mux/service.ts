/**
 * The server side of the multiplexed call path: the implementation of `dmtp.v1.Mux` that a DMTP server adds
 * beside its ordinary unary methods. Handlers and middleware are the very same as on the unary path.
 *
 *   server.addService(muxServiceDefinition, createMuxService(lookup, middleware));
 *
 * `muxServiceDefinition` is `MuxService` with the messages passed through as bytes, so the mux codec reads
 * them (fast) and an unreadable batch closes the stream with INVALID_ARGUMENT. The generated `MuxService` works
 * too (messages then arrive decoded by ts-proto, slower, and an unreadable batch is grpc-js's INTERNAL).
 */
import type { ServerDuplexStream, ServiceDefinition, UntypedServiceImplementation } from '@grpc/grpc-js';
import { systemClock } from '../../common/clock';
import { MuxService, type MuxBatch } from '../../proto/gen/dmtp/v1/mux';
import type { MethodLookup, ServerMiddleware } from '../middleware';
import { CallAdmission } from '../admission';
import { DEFAULTS, type MuxServiceOptions } from './options';
import { MuxServerStream } from './server-stream';

const identity = (b: Buffer): Buffer => b;

/** `dmtp.v1.Mux` with the batches left as bytes (same path and wire format as the generated `MuxService`). */
export const muxServiceDefinition: ServiceDefinition = {
  call: {
    path: MuxService.call.path,
    requestStream: true,
    responseStream: true,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  },
};

/** The grpc-js implementation object (only `call` is a handler; the rest are controls grpc-js ignores). */
export interface MuxServiceImpl extends UntypedServiceImplementation {
  /** The grpc-js handler of `Mux.Call`. */
  call(stream: ServerDuplexStream<Buffer | MuxBatch, Buffer | MuxBatch>): void;
  /** Streams open now. */
  streamCount(): number;
  /** Calls being handled now, over all streams. */
  inFlightCount(): number;
  /**
   * Graceful stop: new requests are answered UNAVAILABLE, calls in flight finish, then every stream is ended
   * (status OK), so `server.tryShutdown()` can complete. Call it before shutting the server down.
   */
  drain(): Promise<void>;
}

export function createMuxService(
  lookup: MethodLookup,
  middleware: ServerMiddleware[] = [],
  options: MuxServiceOptions = {},
  /** The server's limit over both paths (`maxConcurrentCalls`); none without it. */
  admission: CallAdmission = new CallAdmission(Infinity),
): MuxServiceImpl {
  const streams = new Set<MuxServerStream>();
  let draining = false;
  const ctx = {
    lookup,
    middleware,
    maxInFlight: options.maxInFlightPerStream ?? DEFAULTS.serverMaxInFlightPerStream,
    maxRequestBytes: options.maxRequestBytes ?? DEFAULTS.maxRequestBytes,
    maxResponseBytes: options.maxResponseBytes ?? DEFAULTS.maxResponseBytes,
    maxBatchBytes: options.maxBatchBytes ?? DEFAULTS.maxBatchBytes,
    clock: options.clock ?? systemClock,
    draining: () => draining,
    admission,
  };
  return {
    call(stream) {
      const s = new MuxServerStream(stream, ctx);
      streams.add(s);
      void s.finished.then(() => streams.delete(s));
      if (draining) s.drain();
    },
    streamCount() {
      return streams.size;
    },
    inFlightCount() {
      let n = 0;
      for (const s of streams) n += s.inFlight;
      return n;
    },
    async drain() {
      draining = true;
      const all = [...streams];
      for (const s of all) s.drain();
      await Promise.all(all.map((s) => s.finished));
    },
  };
}
