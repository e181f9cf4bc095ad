/** A raw `Mux.Call` stream for tests: writes hand-made batches and collects what the server answers. */
import * as grpc from '@grpc/grpc-js';
import { MuxService } from '../../proto/gen/dmtp/v1/mux';
import { decodeBatch, type DecodedFrame } from '../../rpc/mux/codec';

const identity = (b: Buffer): Buffer => b;

export class RawMuxStream {
  readonly frames: DecodedFrame[] = [];
  status: grpc.StatusObject | undefined;
  private readonly client: grpc.Client;
  private readonly stream: grpc.ClientDuplexStream<Buffer, Buffer>;
  private waiters: Array<() => void> = [];

  constructor(address: string) {
    this.client = new grpc.Client(address, grpc.credentials.createInsecure());
    this.stream = this.client.makeBidiStreamRequest(MuxService.call.path, identity, identity);
    this.stream.on('data', (b: Buffer) => {
      this.frames.push(...decodeBatch(b));
      this.wake();
    });
    this.stream.on('error', () => undefined);
    this.stream.on('status', (s) => {
      this.status = s;
      this.wake();
    });
  }

  /** False when the stream's buffer is full (the server stopped reading). */
  write(batch: Buffer): boolean {
    return this.stream.write(batch);
  }

  /** Stops reading responses (a peer that never reads), or starts again. */
  pause(): void {
    this.stream.pause();
  }

  resume(): void {
    this.stream.resume();
  }

  /** Resolves once `pred` holds (checked after every message and status), or rejects after `ms`. */
  async until(pred: () => boolean, ms = 5_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error('condition not met in time');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 50);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  frame(callId: number): DecodedFrame | undefined {
    return this.frames.find((f) => f.callId === callId);
  }

  close(): void {
    this.stream.cancel();
    this.client.close();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
}
