import { strict as assert } from 'node:assert';
import { GRPCResourceExhastedError, GRPCUnavailableError } from 'etcd3';
import { InvalidArgumentError } from '../../../common';
import { compileOptions, etcdChannelOptions, etcdFaultHandling } from '../../../registry';

describe('registry: etcd channel options', () => {
  it('keepalive and reconnect backoff by default, as given otherwise', () => {
    assert.deepEqual(etcdChannelOptions(), {
      'grpc.keepalive_time_ms': 20_000,
      'grpc.keepalive_timeout_ms': 10_000,
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 2_000,
    });
    assert.deepEqual(
      etcdChannelOptions({
        keepaliveMs: 7_000,
        keepaliveTimeoutMs: 3_000,
        reconnectBackoff: { initialMs: 50, maxMs: 500 },
      }),
      {
        'grpc.keepalive_time_ms': 7_000,
        'grpc.keepalive_timeout_ms': 3_000,
        'grpc.initial_reconnect_backoff_ms': 50,
        'grpc.max_reconnect_backoff_ms': 500,
      },
    );
  });

  it('refuses a keepalive that is not a positive whole number, naming it', () => {
    for (const bad of [0, -1, 1.5, Number.NaN]) {
      assert.throws(
        () => etcdChannelOptions({ keepaliveMs: bad }),
        (e: Error) => {
          assert.ok(e instanceof InvalidArgumentError, e.message);
          assert.match(e.message, /keepaliveMs/);
          return true;
        },
      );
    }
    assert.throws(() => etcdChannelOptions({ keepaliveTimeoutMs: 0 }), /keepaliveTimeoutMs/);
  });

  it("the registry's config carries the keepalive its client is created with", () => {
    const c = compileOptions({ hosts: 'http://127.0.0.1:1', keepaliveMs: 1_000 });
    assert.equal(c.keepaliveMs, 1_000);
    assert.equal(c.keepaliveTimeoutMs, 10_000);
  });

  it('fault handling: RESOURCE_EXHAUSTED is neither sent again nor counted against the host', async () => {
    // etcd3's default sent a too-large call again and opened the host's breaker: 5 s of failing calls after it.
    const { host, global } = etcdFaultHandling();
    const breaker = host!('127.0.0.1:1');
    const call = (err: Error, counter: { n: number }) =>
      global!.execute(() =>
        breaker.execute(() => {
          counter.n++;
          throw err;
        }),
      );
    const tooLarge = { n: 0 };
    for (let i = 0; i < 5; i++) {
      await assert.rejects(
        call(new GRPCResourceExhastedError('too large'), tooLarge),
        GRPCResourceExhastedError,
      );
    }
    assert.equal(tooLarge.n, 5, 'each refused call was sent once, and the breaker stayed closed');
    // A host that is down still counts: sent again, and the breaker opens after three in a row.
    const down = { n: 0 };
    await assert.rejects(call(new GRPCUnavailableError('down'), down)); // the last try meets the open breaker
    assert.equal(down.n, 3);
    await assert.rejects(call(new GRPCUnavailableError('down'), down), /circuit breaker is open/);
    assert.equal(down.n, 3);
  });
});
