/**
 * A FAKE rpc Transport for unit tests of the client's logic (no network): answers with its instance id, or
 * throws what `fail` returns for the attempt; counts attempts.
 */
import { Metadata } from '@grpc/grpc-js';
import type { Transport, TransportCall, TransportResult } from '../../rpc';

export class FakeTransport implements Transport {
  inFlight = 0;
  calls = 0;
  closed = false;
  /** Asked at each attempt: an error fails it, undefined lets it answer. */
  fail?: () => Error | undefined;
  constructor(
    readonly kind: 'unary' | 'mux',
    readonly address: string,
    private readonly id: string,
  ) {}
  async invoke(_call: TransportCall): Promise<TransportResult> {
    this.calls++;
    const err = this.fail?.();
    if (err) throw err;
    return { response: Buffer.from(this.id), trailers: new Metadata() };
  }
  close(): void {
    this.closed = true;
  }
}
