/**
 * One call arriving over the multiplexed stream, as handlers and middleware see it (`IncomingCall`). What most
 * calls never touch is built on first use: the request Metadata, the trailers and the AbortSignal. A unary call
 * pays for those inside grpc-js anyway; here they would cost more than the rest of the dispatch.
 */
import { Metadata } from '@grpc/grpc-js';
import type { IncomingCall, ResponseSlot } from '../middleware';
import { mapToMetadata, metadataToMap } from './metadata-map';

export class MuxIncomingCall<Req = unknown> implements IncomingCall<Req>, ResponseSlot {
  request!: Req;
  /** Set once the call is over for the stream (answered, cancelled or expired): later outcomes are dropped. */
  done = false;
  /** The handler's response and its bytes, encoded inside the middleware chain (`invokeHandler`). */
  encodedResponse: unknown = undefined;
  encodedBytes: Buffer | undefined = undefined;
  private md: Metadata | undefined;
  private tr: Metadata | undefined;
  private controller: AbortController | undefined;
  private abortReason: Error | undefined;

  constructor(
    readonly callId: number,
    readonly method: string,
    readonly deadline: number,
    readonly peer: string,
    private readonly metadataMap: Record<string, string> | undefined,
    readonly maxResponseBytes: number,
  ) {}

  get metadata(): Metadata {
    return (this.md ??= mapToMetadata(this.metadataMap));
  }

  set metadata(md: Metadata) {
    this.md = md;
  }

  get trailers(): Metadata {
    return (this.tr ??= new Metadata());
  }

  set trailers(md: Metadata) {
    this.tr = md;
  }

  get signal(): AbortSignal {
    if (this.controller === undefined) {
      this.controller = new AbortController();
      if (this.abortReason !== undefined) this.controller.abort(this.abortReason);
    }
    return this.controller.signal;
  }

  get aborted(): boolean {
    return this.abortReason !== undefined;
  }

  /** Cancels the call for its handler (the caller cancelled, the deadline passed or the stream is gone). */
  abort(reason: Error): void {
    if (this.abortReason !== undefined) return;
    this.abortReason = reason;
    this.controller?.abort(reason);
  }

  /** The trailers as a frame map, undefined when there are none. */
  trailerMap(): Record<string, string> | undefined {
    return this.tr === undefined ? undefined : metadataToMap(this.tr);
  }
}
