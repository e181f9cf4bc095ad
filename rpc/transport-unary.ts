/**
 * The plain unary transport: one grpc-js Client (one channel, one HTTP/2 connection) per instance address,
 * calls made with `makeUnaryRequest` and identity serializers, since the client helper has already encoded the
 * request with the service definition and decodes the response itself.
 */
import { Client, Metadata, status as Status, type ServiceError } from '@grpc/grpc-js';
import { clientTls, type TlsOptions } from './tls';
import { fromStatus, UnavailableError } from '../common/errors';
import { ANSWERED_TRAILER, isNotSent, markAnswered, NOT_RUN_TRAILER } from './not-sent';
import {
  MAX_MESSAGE_BYTES,
  withTrailers,
  type Transport,
  type TransportCall,
  type TransportResult,
} from './transport';

export interface UnaryTransportOptions {
  /** Extra grpc-js channel options. */
  channelOptions?: Record<string, string | number>;
  /** TLS to the instance (plaintext without). */
  tls?: TlsOptions;
}

const identity = (b: Buffer): Buffer => b;

interface Pending {
  reject(err: Error): void;
  cancel(): void;
}

export class UnaryTransport implements Transport {
  readonly kind = 'unary' as const;
  private readonly client: Client;
  private readonly pending = new Set<Pending>();
  private closed = false;

  constructor(
    readonly address: string,
    options: UnaryTransportOptions = {},
  ) {
    const tls = clientTls(`transport to ${address}`, options.tls);
    this.client = new Client(address, tls.credentials, {
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      ...tls.channelOptions,
      ...options.channelOptions,
    });
    // connect now rather than on the first call: a new instance is ready by the time calls are picked for it
    this.client.getChannel().getConnectivityState(true);
  }

  get inFlight(): number {
    return this.pending.size;
  }

  invoke(call: TransportCall): Promise<TransportResult> {
    if (this.closed) {
      return Promise.reject(
        new UnavailableError(`transport to ${this.address} is closed`, {
          details: { address: this.address, notSent: true },
        }),
      );
    }
    return new Promise<TransportResult>((resolve, reject) => {
      let settled = false;
      let response: Buffer | undefined;
      const entry: Pending = {
        reject: (err) => finish(err),
        cancel: () => grpcCall.cancel(),
      };
      const finish = (err: Error | null, trailers?: Metadata) => {
        if (settled) return;
        settled = true;
        this.pending.delete(entry);
        call.signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve({ response: response ?? Buffer.alloc(0), trailers: trailers ?? new Metadata() });
      };
      const onAbort = () => grpcCall.cancel();
      const grpcCall = this.client.makeUnaryRequest<Buffer, Buffer>(
        call.method,
        identity,
        identity,
        call.request,
        call.metadata,
        { deadline: call.deadline === Infinity ? undefined : call.deadline },
        (err: ServiceError | null, value?: Buffer) => {
          if (err) {
            // Never sent, or refused by the server before anything ran (NOT_RUN_TRAILER): either may go elsewhere.
            const notRun = err.metadata?.get(NOT_RUN_TRAILER)[0] === '1';
            const details = {
              address: this.address,
              notSent: notRun || isNotSent(err.code, err.details) || undefined,
            };
            const typed = withTrailers(fromStatus(err.code, err.details, { details }), err.metadata);
            // A status the server's handler answered (not one grpc-js made up for a broken connection).
            finish(err.metadata?.get(ANSWERED_TRAILER).length ? markAnswered(typed) : typed);
          } else response = value;
        },
      );
      // the callback runs before 'status'; the trailers arrive with 'status'
      grpcCall.on('status', (s) => {
        if (s.code === Status.OK) finish(null, s.metadata);
      });
      this.pending.add(entry);
      if (call.signal) {
        if (call.signal.aborted) grpcCall.cancel();
        else call.signal.addEventListener('abort', onAbort, { once: true });
      }
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of [...this.pending]) {
      p.reject(
        new UnavailableError(`transport to ${this.address} closed with the call in flight`, {
          details: { address: this.address },
        }),
      );
      p.cancel();
    }
    this.client.close();
  }
}
