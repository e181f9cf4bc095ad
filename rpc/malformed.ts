/**
 * Requests that are not valid protobuf. grpc-js answers a decoder that throws with INTERNAL ("Error deserializing
 * request"), which tells the caller the server broke; it was the request. A service definition passed through
 * `tolerantDecoders` decodes such bytes to a marker instead, and the handler's adapter answers INVALID_ARGUMENT.
 */
import type { ServiceDefinition } from '@grpc/grpc-js';
import { InvalidArgumentError } from '../common';

const MALFORMED = Symbol('malformed request');

interface Malformed {
  [MALFORMED]: string;
}

/** The same definition, with each request decoder turning undecodable bytes into a marker. */
export function tolerantDecoders<D extends ServiceDefinition>(definition: D): D {
  return Object.fromEntries(
    Object.entries(definition).map(([name, m]) => [
      name,
      {
        ...m,
        requestDeserialize: (buf: Buffer) => {
          try {
            return m.requestDeserialize(buf);
          } catch (err) {
            return { [MALFORMED]: (err as Error).message } satisfies Malformed;
          }
        },
      },
    ]),
  ) as D;
}

/** Throws INVALID_ARGUMENT (naming the method and the decoder's complaint) for a request decoded to the marker. */
export function assertDecoded(method: string, request: unknown): void {
  if (request !== null && typeof request === 'object' && MALFORMED in request) {
    throw new InvalidArgumentError(`malformed ${method} request: ${(request as Malformed)[MALFORMED]}`);
  }
}
