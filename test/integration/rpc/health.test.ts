/**
 * The standard gRPC health protocol on DMTP's servers and the coordinator, asked by a plain grpc-js client as a
 * Kubernetes probe or grpc_health_probe would: real sockets, real server stop.
 */
import {
  credentials,
  makeGenericClientConstructor,
  status,
  type Client,
  type ServiceError,
} from '@grpc/grpc-js';
import { strict as assert } from 'node:assert';
import { once } from 'node:events';
import { Coordinator, MemoryTxLog } from '../../../coordinator';
import { HealthService } from '../../../rpc/health';
import { startServer, type RpcServer } from '../../../rpc/server';
import {
  HealthCheckResponse_ServingStatus as S,
  type HealthCheckResponse,
} from '../../../proto/gen/grpc/health/v1/health';
import { EchoService, echoHandlers } from '../../support/echo-service';

const HealthClient = makeGenericClientConstructor(HealthService, 'grpc.health.v1.Health');

interface Health extends Client {
  check(req: { service: string }, cb: (err: ServiceError | null, res?: HealthCheckResponse) => void): void;
  watch(req: { service: string }): NodeJS.ReadableStream & { cancel(): void };
}

function healthClient(address: string): Health {
  return new HealthClient(address, credentials.createInsecure()) as unknown as Health;
}

function check(c: Health, service: string): Promise<S> {
  return new Promise((resolve, reject) =>
    c.check({ service }, (err, res) => (err ? reject(err) : resolve(res!.status))),
  );
}

describe('rpc health protocol (grpc.health.v1)', function () {
  this.timeout(20_000);
  let server: RpcServer | undefined;
  let client: Health | undefined;

  afterEach(async () => {
    client?.close();
    await server?.stop();
    server = client = undefined;
  });

  it('answers SERVING for the server and each service, NOT_FOUND for any other name', async () => {
    server = await startServer({
      services: [{ name: 'health-echo', definition: EchoService, handlers: echoHandlers('a') }],
      drainDelayMs: 0,
    });
    client = healthClient(server.address);
    assert.equal(await check(client, ''), S.SERVING);
    assert.equal(await check(client, 'health-echo'), S.SERVING);
    await assert.rejects(check(client, 'nope'), (err: ServiceError) => {
      assert.equal(err.code, status.NOT_FOUND);
      assert.match(err.details, /unknown service 'nope'/);
      return true;
    });
    await assert.rejects(check(client, 'x'.repeat(300)), { code: status.INVALID_ARGUMENT });
    const started = Date.now();
    const bad = client.watch({ service: 'x'.repeat(300) });
    bad.on('data', () => assert.fail('no status for a bad name'));
    const [err] = (await once(bad, 'error')) as [ServiceError];
    assert.equal(err.code, status.INVALID_ARGUMENT, err.details);
    assert.ok(Date.now() - started < 1_000, 'answered at once, not at a deadline');
  });

  it("reports the application's own status, and Watch streams every change until stop ends it", async () => {
    server = await startServer({
      services: [{ name: 'health-watch', definition: EchoService, handlers: echoHandlers('a') }],
      drainDelayMs: 0,
    });
    client = healthClient(server.address);
    const seen: S[] = [];
    const watch = client.watch({ service: 'health-watch' });
    watch.on('data', (r: HealthCheckResponse) => seen.push(r.status));
    const ended = once(watch, 'end');
    while (seen.length < 1) await new Promise((r) => setTimeout(r, 10));
    server.health.set('health-watch', 'NOT_SERVING'); // e.g. its database is down
    assert.equal(await check(client, 'health-watch'), S.NOT_SERVING);
    server.health.set('health-watch', 'SERVING');
    while (seen.length < 3) await new Promise((r) => setTimeout(r, 10));
    await server.stop(); // NOT_SERVING first, then the watch ends: the stop is not held by it
    server = undefined;
    await ended;
    assert.deepEqual(seen, [S.SERVING, S.NOT_SERVING, S.SERVING, S.NOT_SERVING]);
  });

  it('a Watch of an unknown name hears SERVICE_UNKNOWN, then the status once it is reported', async () => {
    server = await startServer({ services: [], drainDelayMs: 0 });
    client = healthClient(server.address);
    const seen: S[] = [];
    const watch = client.watch({ service: 'later' });
    watch.on('data', (r: HealthCheckResponse) => seen.push(r.status));
    watch.on('error', () => undefined); // cancelled below
    while (seen.length < 1) await new Promise((r) => setTimeout(r, 10));
    server.health.set('later', 'SERVING');
    while (seen.length < 2) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(seen, [S.SERVICE_UNKNOWN, S.SERVING]);
    watch.cancel();
  });

  it('is off with health: false (UNIMPLEMENTED)', async () => {
    server = await startServer({ services: [], drainDelayMs: 0, health: false });
    client = healthClient(server.address);
    await assert.rejects(check(client, ''), { code: status.UNIMPLEMENTED });
  });

  it('the coordinator answers SERVING once it serves, and NOT_SERVING when it stops', async () => {
    const coordinator = new Coordinator({ id: 'health-c1', log: new MemoryTxLog({ unsafeForTests: true }) });
    const address = await coordinator.start();
    client = healthClient(address);
    try {
      assert.equal(await check(client, ''), S.SERVING);
      assert.equal(await check(client, 'dmtp-coordinator'), S.SERVING);
      const seen: S[] = [];
      const watch = client.watch({ service: '' });
      watch.on('data', (r: HealthCheckResponse) => seen.push(r.status));
      const ended = once(watch, 'end');
      while (seen.length < 1) await new Promise((r) => setTimeout(r, 10));
      await coordinator.stop();
      await ended;
      assert.deepEqual(seen, [S.SERVING, S.NOT_SERVING]);
    } finally {
      await coordinator.stop();
    }
  });
});
