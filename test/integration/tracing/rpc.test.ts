/**
 * OpenTelemetry spans of DMTP calls (rpc's tracing middleware), read from the SDK's in-memory exporter: two real
 * services found in etcd, the first calling the second from its handler, over the multiplexed path and unary.
 * The trace context crosses each hop in the call's metadata; failures end both sides' spans with the gRPC status;
 * a caller without the middleware starts no trace; without an SDK the middleware sends nothing and costs nothing
 * but its calls.
 */
import { strict as assert } from 'node:assert';
import { setTimeout as sleep } from 'node:timers/promises';
import { SpanKind, SpanStatusCode, trace, context } from '@opentelemetry/api';
import {
  Metadata,
  Server,
  ServerCredentials,
  status,
  type sendUnaryData,
  type ServerUnaryCall,
} from '@grpc/grpc-js';
import { NotFoundError } from '../../../common';
import { EtcdRegistry } from '../../../registry';
import {
  client,
  clientSpan,
  startServer,
  traceUnaryService,
  tracingClientMiddleware,
  tracingServerMiddleware,
  UnaryTransport,
  type ClientOptions,
  type RpcServer,
} from '../../../rpc';
import { EchoService } from '../../support/echo-service';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';
import { installTracing, isChildOf, oneSpan, type TestTracing } from '../../support/tracing';

describe('tracing DMTP calls (OpenTelemetry SDK in memory, real gRPC, etcd)', function () {
  this.timeout(20_000);
  let tracing: TestTracing | undefined;
  let registry: EtcdRegistry;
  let front: string;
  let back: string;
  const servers: RpcServer[] = [];
  const clients: { close(): void }[] = [];
  /** The metadata of the last call the back service took. */
  let backMetadata: Metadata | undefined;

  beforeEach(function () {
    front = nameFor(this, 30);
    back = `${front}-back`;
    registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix: `/dmtp-test/${front}`, leaseTtlSeconds: 2 });
    backMetadata = undefined;
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const s of servers.splice(0)) await s.stop();
    await registry.close();
    await tracing?.uninstall();
    tracing = undefined;
  });

  const echoClient = (service: string, options: ClientOptions = {}) => {
    const c = client(registry, service, EchoService, { timeoutMs: 3_000, maxAttempts: 1, ...options });
    clients.push(c);
    return c;
  };

  /** `back` answers echo; `front`'s echo calls back's (the onward call), its whoami fails NOT_FOUND. */
  const serveBoth = async (options: ClientOptions = {}) => {
    const serve = (
      name: string,
      instanceId: string,
      handlers: Parameters<typeof startServer>[0]['services'][0]['handlers'],
    ) =>
      startServer({
        registry,
        instance: { instanceId },
        middleware: [tracingServerMiddleware()],
        services: [{ name, definition: EchoService, handlers }],
        drainDelayMs: 0,
        gracePeriodMs: 500,
      }).then((s) => (servers.push(s), s));
    await serve(back, 'back-1', {
      echo: (call) => ((backMetadata = call.metadata), call.request),
      whoami: () => Buffer.from('back'),
      sleep: () => Buffer.from('back'),
    });
    // The onward client sees back before front serves (a first call must not find it missing).
    const onward = echoClient(back, { ...options, middleware: [tracingClientMiddleware()] });
    await onward.ready();
    while (onward.instances().length === 0) await sleep(20);
    await serve(front, 'front-1', {
      echo: async (call) => onward.echo(call.request),
      whoami: () => {
        throw new NotFoundError('no such thing here', { details: { thing: 'x' } });
      },
      sleep: () => Buffer.from('front'),
    });
  };

  for (const path of ['multiplexed', 'unary'] as const) {
    it(`links caller → server → onward call → its server in one trace, over the ${path} path`, async () => {
      tracing = installTracing();
      const options: ClientOptions =
        path === 'unary' ? { transportFactory: (i) => new UnaryTransport(i.address) } : {};
      await serveBoth(options);
      const c = echoClient(front, { ...options, middleware: [tracingClientMiddleware()] });
      const root = trace.getTracer('test').startSpan('test-root');
      const answer = await context.with(trace.setSpan(context.active(), root), () =>
        c.echo(Buffer.from('hi')),
      );
      root.end();
      assert.equal(answer.toString(), 'hi');

      const spans = tracing.spans();
      const name = 'dmtp.test.Echo/Echo';
      const client1 = oneSpan(spans, { name, kind: SpanKind.CLIENT, attributes: { 'dmtp.service': front } });
      const client2 = oneSpan(spans, { name, kind: SpanKind.CLIENT, attributes: { 'dmtp.service': back } });
      const serverSpans = spans.filter((s) => s.name === name && s.kind === SpanKind.SERVER);
      assert.equal(serverSpans.length, 2);
      const frontServer = serverSpans.find((s) => isChildOf(s, client1));
      const backServer = serverSpans.find((s) => isChildOf(s, client2));
      assert.ok(isChildOf(client1, root), 'the call is a child of the span active where it was made');
      assert.ok(frontServer, 'front’s server span is the child of the caller’s client span');
      assert.ok(isChildOf(client2, frontServer), 'the onward call is a child of the handler’s server span');
      assert.ok(backServer, 'back’s server span is the child of the onward call');
      for (const s of [client1, client2, frontServer, backServer]) {
        assert.equal(s.spanContext().traceId, root.spanContext().traceId, `${s.name} in the root's trace`);
        assert.equal(s.status.code, SpanStatusCode.UNSET);
        assert.equal(s.attributes['rpc.system'], 'grpc');
        assert.equal(s.attributes['rpc.service'], 'dmtp.test.Echo');
        assert.equal(s.attributes['rpc.method'], 'Echo');
        assert.equal(s.attributes['rpc.grpc.status_code'], 0);
        assert.equal(s.instrumentationScope.name, 'dmtp');
      }
      assert.equal(client1.attributes['dmtp.instance'], 'front-1');
      assert.equal(client2.attributes['dmtp.instance'], 'back-1');
      assert.equal(typeof frontServer.attributes['dmtp.peer'], 'string');
      // What crossed the wire: W3C trace context naming the onward call's span.
      const sent = backMetadata?.get('traceparent')[0];
      assert.equal(sent, `00-${client2.spanContext().traceId}-${client2.spanContext().spanId}-01`);
    });
  }

  it('ends the caller’s and the server’s span with the gRPC status of a failed call', async () => {
    tracing = installTracing();
    await serveBoth();
    const c = echoClient(front, { middleware: [tracingClientMiddleware()] });
    await assert.rejects(c.whoami(Buffer.alloc(0)), (err: Error & { code?: number }) => err.code === 5);
    const spans = tracing.spans();
    const name = 'dmtp.test.Echo/WhoAmI';
    const clientSpan = oneSpan(spans, { name, kind: SpanKind.CLIENT });
    const serverSpan = oneSpan(spans, { name, kind: SpanKind.SERVER });
    assert.ok(isChildOf(serverSpan, clientSpan));
    for (const s of [clientSpan, serverSpan]) {
      assert.equal(s.status.code, SpanStatusCode.ERROR);
      assert.match(s.status.message ?? '', /no such thing here/);
      assert.equal(s.attributes['rpc.grpc.status_code'], 5);
      assert.ok(
        s.events.some((e) => e.name === 'exception'),
        `${SpanKind[s.kind]} span records the exception`,
      );
    }
  });

  it('starts a new trace at a server whose caller sends none, and sends none without an SDK', async () => {
    tracing = installTracing();
    await serveBoth();
    // A caller without the middleware: the front server's span is a root, its onward call in that trace.
    await echoClient(front).echo(Buffer.from('untraced caller'));
    const spans = tracing.spans();
    const frontServer = spans.find((s) => s.kind === SpanKind.SERVER && s.parentSpanContext === undefined);
    assert.ok(frontServer, 'a root server span');
    assert.equal(
      backMetadata?.get('traceparent')[0]?.toString().split('-')[1],
      frontServer.spanContext().traceId,
    );

    // No SDK registered (the default for an application that does not use OpenTelemetry): calls work, carry no
    // trace context, and no span reaches the old exporter.
    await tracing.uninstall();
    const before = spans.length;
    const c = echoClient(front, { middleware: [tracingClientMiddleware()] });
    assert.equal((await c.echo(Buffer.from('no sdk'))).toString(), 'no sdk');
    assert.deepEqual(backMetadata?.get('traceparent'), []);
    assert.equal(tracing.spans().length, before);
    tracing = undefined;
  });

  it('traceUnaryService: a plain grpc-js service’s unary calls in server spans, their answers unchanged', async () => {
    tracing = installTracing();
    const server = new Server();
    const answered = new Metadata();
    answered.set('x-answer', 'yes');
    server.addService(
      EchoService,
      traceUnaryService(EchoService, {
        echo: (call: ServerUnaryCall<Buffer, Buffer>, cb: sendUnaryData<Buffer>) =>
          cb(null, call.request, answered),
        whoami: (_call: ServerUnaryCall<Buffer, Buffer>, cb: sendUnaryData<Buffer>) =>
          cb({ code: status.PERMISSION_DENIED, details: 'not you' }),
        sleep: (_call: ServerUnaryCall<Buffer, Buffer>, cb: sendUnaryData<Buffer>) =>
          cb(null, Buffer.alloc(0)),
      }),
    );
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      ),
    );
    const unary = new UnaryTransport(`127.0.0.1:${port}`);
    try {
      const call = (method: string) => {
        const metadata = new Metadata();
        return clientSpan(method, metadata, {}, () =>
          unary.invoke({ method, request: Buffer.from('plain'), metadata, deadline: Date.now() + 3_000 }),
        );
      };
      const res = await call(EchoService.echo.path);
      assert.equal(res.response.toString(), 'plain');
      assert.equal(res.trailers.get('x-answer')[0], 'yes', 'the handler’s trailers reach the caller');
      await assert.rejects(call(EchoService.whoami.path), (err: Error & { code?: number }) => err.code === 7);
      const spans = tracing.spans();
      for (const [name, code] of [
        ['dmtp.test.Echo/Echo', 0],
        ['dmtp.test.Echo/WhoAmI', 7],
      ] as const) {
        const sent = oneSpan(spans, { name, kind: SpanKind.CLIENT });
        const served = oneSpan(spans, { name, kind: SpanKind.SERVER });
        assert.ok(isChildOf(served, sent), `${name} served in the caller’s trace`);
        assert.equal(served.attributes['rpc.grpc.status_code'], code);
        assert.equal(sent.attributes['rpc.grpc.status_code'], code);
      }
      const denied = oneSpan(spans, { name: 'dmtp.test.Echo/WhoAmI', kind: SpanKind.SERVER });
      assert.equal(denied.status.code, SpanStatusCode.ERROR);
      assert.equal(denied.status.message, 'not you');
    } finally {
      unary.close();
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    }
  });
});
