/**
 * invokeHandler encodes the handler's response inside the middleware chain: a response that cannot be encoded,
 * or is above the transport's limit, is a failure the middleware sees; the bytes are kept for the transport, which
 * encodes again only a response a middleware put in the handler's place.
 */
import { strict as assert } from 'node:assert';
import { Metadata } from '@grpc/grpc-js';
import { InternalError, ResourceExhaustedError } from '../../../common/errors';
import {
  invokeHandler,
  responseBytes,
  type IncomingCall,
  type MethodEntry,
  type ResponseSlot,
  type ServerMiddleware,
} from '../../../rpc/middleware';

const PATH = '/test.Shop/Reserve';

function entryOf(handler: MethodEntry['handler']): MethodEntry & { encoded: number } {
  const entry = {
    path: PATH,
    deserialize: (b: Buffer) => JSON.parse(b.toString()) as unknown,
    serialize: (v: unknown) => {
      entry.encoded++;
      if (typeof (v as { n?: unknown }).n !== 'number')
        throw new Error(`invalid int32: ${(v as { n?: unknown }).n}`);
      return Buffer.from(JSON.stringify(v));
    },
    handler,
    encoded: 0,
  };
  return entry;
}

function callOf(maxResponseBytes = Infinity): IncomingCall & ResponseSlot {
  return {
    method: PATH,
    request: {},
    metadata: new Metadata(),
    deadline: Infinity,
    trailers: new Metadata(),
    signal: new AbortController().signal,
    peer: 'test',
    encodedResponse: undefined,
    encodedBytes: undefined,
    maxResponseBytes,
  };
}

/** A middleware recording what the chain answered it: 'ok' or the error's name. */
function recorder(seen: string[]): ServerMiddleware {
  return (_call, next) =>
    next().then(
      (res) => (seen.push('ok'), res),
      (err: Error) => {
        seen.push(err.name);
        throw err;
      },
    );
}

describe('rpc/middleware: invokeHandler encodes the response inside the chain', () => {
  for (const kind of ['synchronous', 'async'] as const) {
    it(`encodes a ${kind} handler's response once, and the transport sends those bytes`, async () => {
      const answer = { n: 1 };
      const entry = entryOf(kind === 'async' ? async () => answer : () => answer);
      const call = callOf();
      const res = await invokeHandler(entry, call, [recorder([])], call);
      assert.equal(res, answer);
      const bytes = responseBytes(entry, call, res);
      assert.equal(bytes, call.encodedBytes);
      assert.equal(bytes.toString(), '{"n":1}');
      assert.equal(entry.encoded, 1, 'encoded once');
    });
  }

  it('fails inside the chain, naming the method and the encoder, for a response that cannot be encoded', async () => {
    const seen: string[] = [];
    const entry = entryOf(async () => ({ price: 250 }));
    const call = callOf();
    await assert.rejects(invokeHandler(entry, call, [recorder(seen)], call), (err: Error) => {
      assert.ok(err instanceof InternalError, String(err));
      assert.equal(
        err.message,
        `${PATH}: the handler's response cannot be encoded: invalid int32: undefined`,
      );
      assert.equal(err.details.method, PATH);
      return true;
    });
    assert.deepEqual(seen, ['InternalError'], 'the middleware saw the failure');
  });

  it("fails inside the chain for a response above the transport's limit", async () => {
    const seen: string[] = [];
    const call = callOf(8);
    await assert.rejects(
      invokeHandler(
        entryOf(() => ({ n: 123456789 })),
        call,
        [recorder(seen)],
        call,
      ),
      (err: Error) =>
        err instanceof ResourceExhaustedError &&
        /response of 15 bytes is above the 8 limit/.test(err.message),
    );
    assert.deepEqual(seen, ['ResourceExhaustedError']);
  });

  it('encodes again a response a middleware answered in place of the handler’s, and fails on it there', async () => {
    const entry = entryOf(() => ({ n: 1 }));
    const call = callOf();
    const replaced = await invokeHandler(entry, call, [(_c, next) => next().then(() => ({ n: 2 }))], call);
    assert.equal(responseBytes(entry, call, replaced).toString(), '{"n":2}');
    assert.equal(entry.encoded, 2);
    assert.throws(() => responseBytes(entry, call, { n: 'two' }), InternalError);
  });

  it('without a slot, still fails inside the chain (a server that lets grpc-js encode)', async () => {
    const seen: string[] = [];
    await assert.rejects(
      invokeHandler(
        entryOf(() => ({})),
        callOf(),
        [recorder(seen)],
      ),
      InternalError,
    );
    assert.deepEqual(seen, ['InternalError']);
  });
});
