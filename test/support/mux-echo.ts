/**
 * The echo service the mux tests and bench/rpc-fast.ts share: methods on raw bytes, served over the mux path
 * (`createMuxService`) and as plain grpc-js unary methods on the same server, plus a minimal unary Transport.
 */
import * as grpc from '@grpc/grpc-js';
import { fromStatus } from '../../common/errors';
import type { MethodEntry, MethodLookup, ServerMiddleware } from '../../rpc/middleware';
import { createMuxService, muxServiceDefinition, type MuxServiceImpl } from '../../rpc/mux';
import type { Transport, TransportCall, TransportResult } from '../../rpc/transport';

export const ECHO = '/test.Echo/Echo';
/** Waits the number of ms in the request (ASCII) or until cancelled; answers "slow-done". */
export const SLOW = '/test.Echo/Slow';
export const FAIL = '/test.Echo/Fail';
/** A handler answering UNIMPLEMENTED itself (a feature it does not have), not a missing method. */
export const UNIMPL = '/test.Echo/Unimpl';
/** Waits the number of ms in the request (ASCII) whatever happens, as a handler that ignores its signal does. */
export const STUBBORN = '/test.Echo/Stubborn';

/** Answers as many bytes as the number in the request (ASCII) says: a large response to a small request. */
export const SIZED = '/test.Echo/Sized';

const identity = (b: Buffer): Buffer => b;

export interface EchoLog {
  aborted: string[];
}

export function echoMethods(log: EchoLog = { aborted: [] }): Map<string, MethodEntry> {
  const entries: MethodEntry[] = [
    {
      path: ECHO,
      deserialize: identity,
      serialize: identity as (v: unknown) => Buffer,
      handler: (call) => {
        const t = call.metadata.get('x-trailer');
        if (t.length > 0) call.trailers.set('x-trailer-back', t[0]);
        const b = call.metadata.get('x-bin-bin');
        if (b.length > 0) call.trailers.set('x-bin-back-bin', b[0]);
        return call.request;
      },
    },
    {
      path: SLOW,
      deserialize: identity,
      serialize: identity as (v: unknown) => Buffer,
      handler: (call) =>
        new Promise((resolve, reject) => {
          const ms = Number((call.request as Buffer).toString());
          const timer = setTimeout(() => resolve(Buffer.from('slow-done')), ms);
          call.signal.addEventListener('abort', () => {
            clearTimeout(timer);
            log.aborted.push(`${(call.signal.reason as Error).name}`);
            reject(call.signal.reason);
          });
        }),
    },
    {
      path: STUBBORN,
      deserialize: identity,
      serialize: identity as (v: unknown) => Buffer,
      handler: (call) =>
        new Promise((resolve) =>
          setTimeout(
            () => resolve(Buffer.from('stubborn-done')),
            Number((call.request as Buffer).toString()),
          ),
        ),
    },
    {
      path: SIZED,
      deserialize: identity,
      serialize: identity as (v: unknown) => Buffer,
      handler: (call) => Buffer.alloc(Number((call.request as Buffer).toString()), 5),
    },
    {
      path: UNIMPL,
      deserialize: identity,
      serialize: identity as (v: unknown) => Buffer,
      handler: () => {
        throw fromStatus(grpc.status.UNIMPLEMENTED, 'UNIMPLEMENTED: this plan does not include exports');
      },
    },
    {
      path: FAIL,
      deserialize: identity,
      serialize: identity as (v: unknown) => Buffer,
      handler: () => {
        throw fromStatus(grpc.status.FAILED_PRECONDITION, 'told to fail');
      },
    },
  ];
  return new Map(entries.map((e) => [e.path, e]));
}

export const unaryEchoDefinition: grpc.ServiceDefinition = {
  Echo: {
    path: ECHO,
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  },
};

export interface EchoServer {
  server: grpc.Server;
  mux: MuxServiceImpl;
  address: string;
  log: EchoLog;
  stop(): Promise<void>;
}

/** A grpc.Server on 127.0.0.1 serving the echo methods over the mux path and ECHO as plain unary. */
export async function startEchoServer(
  middleware: ServerMiddleware[] = [],
  options: Parameters<typeof createMuxService>[2] = {},
): Promise<EchoServer> {
  const log: EchoLog = { aborted: [] };
  const methods = echoMethods(log);
  const lookup: MethodLookup = (p) => methods.get(p);
  const server = new grpc.Server({ 'grpc.max_receive_message_length': -1 });
  const mux = createMuxService(lookup, middleware, options);
  server.addService(muxServiceDefinition, mux);
  server.addService(unaryEchoDefinition, {
    Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) =>
      cb(null, call.request),
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return {
    server,
    mux,
    log,
    address: `127.0.0.1:${port}`,
    async stop() {
      server.forceShutdown();
    },
  };
}

/** A minimal unary Transport (the real one is rpc/transport-unary.ts), for the large-payload fallback. */
export class TestUnaryTransport implements Transport {
  readonly kind = 'unary' as const;
  inFlight = 0;
  calls = 0;
  private readonly client: grpc.Client;
  constructor(readonly address: string) {
    this.client = new grpc.Client(address, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': -1,
    });
  }
  invoke(call: TransportCall): Promise<TransportResult> {
    this.calls++;
    this.inFlight++;
    return new Promise<TransportResult>((resolve, reject) => {
      let trailers = new grpc.Metadata();
      const c = this.client.makeUnaryRequest(
        call.method,
        identity,
        identity,
        call.request,
        call.metadata,
        { deadline: call.deadline === Infinity ? undefined : call.deadline },
        (err, res) => {
          this.inFlight--;
          if (err) reject(fromStatus(err.code, err.details, { details: { address: this.address } }));
          else resolve({ response: res!, trailers });
        },
      );
      c.on('status', (s) => (trailers = s.metadata));
    });
  }
  close(): void {
    this.client.close();
  }
}
