/**
 * `maxConcurrentCalls` on real servers over real sockets: past the limit a call is refused at once, on the unary
 * and the multiplexed path alike, before any handler runs, with RESOURCE_EXHAUSTED marked as not run; an
 * `unlimited` binding still runs; and a DMTP client sends a refused call to another instance of the service.
 */
import { Metadata, status, type MethodDefinition } from '@grpc/grpc-js';
import { strict as assert } from 'node:assert';
import { InvalidArgumentError, type DmtpError } from '../../../common';
import { EtcdRegistry } from '../../../registry';
import { client } from '../../../rpc/client';
import { RpcMetrics } from '../../../rpc/metrics';
import { MuxTransport } from '../../../rpc/mux';
import { answeredByServer } from '../../../rpc/not-sent';
import { RpcServer, startServer, type Handlers } from '../../../rpc/server';
import { UnaryTransport } from '../../../rpc/transport-unary';
import type { Transport } from '../../../rpc/transport';
import { EchoService, echoHandlers } from '../../support/echo-service';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';

/** The Echo service's handlers, with `sleep` held until `release()` (its request is ignored). */
function gated(label: string) {
  const ran: string[] = [];
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const base = echoHandlers(label, (m) => ran.push(m));
  const handlers: Handlers<typeof EchoService> = {
    ...base,
    sleep: async (call) => {
      ran.push(call.method);
      await gate;
      return Buffer.from(label);
    },
  };
  return { handlers, ran, release: () => open() };
}

const call = (method: MethodDefinition<Buffer, Buffer>, request = Buffer.from('hi')) => ({
  method: method.path,
  request,
  metadata: new Metadata(),
  deadline: Date.now() + 5_000,
});

/** Resolves once `server` runs `n` handlers. */
async function running(server: RpcServer, n: number): Promise<void> {
  for (let i = 0; i < 200 && server.admission.active !== n; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(server.admission.active, n);
}

describe('rpc server: maxConcurrentCalls', function () {
  this.timeout(20_000);

  it('refuses a call past the limit at once on both paths, runs nothing, marks it not run; takes calls again after', async () => {
    const g = gated('a');
    // Echo's requests, as the server decodes them; 'bad' cannot be decoded.
    const decoded: string[] = [];
    const Counted = {
      ...EchoService,
      echo: {
        ...EchoService.echo,
        requestDeserialize: (b: Buffer): Buffer => {
          if (b.toString() === 'bad') throw new RangeError('not an echo request');
          decoded.push(b.toString());
          return b;
        },
      },
    };
    const server = await startServer({
      services: [{ name: 'adm', definition: Counted, handlers: g.handlers }],
      maxConcurrentCalls: 2,
      drainDelayMs: 0,
    });
    const unary = new UnaryTransport(server.address);
    const mux = new MuxTransport({ address: server.address });
    const metrics = new RpcMetrics();
    metrics.trackServer(server);
    const scraped = async () =>
      (await metrics.registry.metrics())
        .split('\n')
        .filter((l) => /^dmtp_rpc_server_(active_calls|refused_total) /.test(l));
    try {
      const held = [unary.invoke(call(EchoService.sleep)), mux.invoke(call(EchoService.sleep))];
      await running(server, 2);
      for (const t of [unary, mux] as Transport[]) {
        await assert.rejects(t.invoke(call(EchoService.echo, Buffer.from(t.kind))), (e: DmtpError) => {
          assert.equal(e.code, status.RESOURCE_EXHAUSTED, e.message);
          assert.equal(
            e.message,
            'this instance is running 2 calls, its limit (maxConcurrentCalls): /dmtp.test.Echo/Echo was not ' +
              'run; try another instance',
          );
          assert.equal(e.details.notSent, true, `${t.kind}: may go to another instance`);
          assert.equal(answeredByServer(e), true, `${t.kind}: the instance is alive`);
          return true;
        });
      }
      assert.deepEqual(g.ran, ['/dmtp.test.Echo/Sleep', '/dmtp.test.Echo/Sleep'], 'no refused handler ran');
      // grpc-js decodes a unary request before any handler of ours sees it; the multiplexed path refuses first.
      assert.ok(!decoded.includes('mux'), `the refused multiplexed request was decoded: ${decoded.join()}`);
      assert.equal(server.admission.refusedTotal, 2);
      assert.deepEqual(await scraped(), [
        'dmtp_rpc_server_active_calls 2',
        'dmtp_rpc_server_refused_total 2',
      ]);

      g.release();
      await Promise.all(held);
      await running(server, 0);
      // A request that cannot be decoded gives its admission back.
      await assert.rejects(mux.invoke(call(EchoService.echo, Buffer.from('bad'))), {
        code: status.INVALID_ARGUMENT,
      });
      assert.equal(server.admission.active, 0);
      for (const t of [unary, mux] as Transport[])
        assert.equal((await t.invoke(call(EchoService.echo))).response.toString(), 'hi');
      assert.deepEqual(await scraped(), [
        'dmtp_rpc_server_active_calls 0',
        'dmtp_rpc_server_refused_total 2',
      ]);
    } finally {
      g.release();
      mux.close();
      unary.close();
      await server.stop();
    }
  });

  it("runs an unlimited binding's methods past the limit, counting them", async () => {
    const g = gated('a');
    const admin = { echo: { ...EchoService.echo, path: '/dmtp.test.Admin/Echo' } };
    const server = await startServer({
      services: [
        { name: 'adm', definition: EchoService, handlers: g.handlers },
        { name: 'adm', definition: admin, handlers: { echo: (c) => c.request }, unlimited: true },
      ],
      maxConcurrentCalls: 1,
      drainDelayMs: 0,
    });
    const mux = new MuxTransport({ address: server.address });
    try {
      const held = mux.invoke(call(EchoService.sleep));
      await running(server, 1);
      assert.equal((await mux.invoke(call(admin.echo, Buffer.from('ok')))).response.toString(), 'ok');
      await assert.rejects(mux.invoke(call(EchoService.echo)), { code: status.RESOURCE_EXHAUSTED });
      g.release();
      await held;
    } finally {
      g.release();
      mux.close();
      await server.stop();
    }
  });

  for (const useMux of [true, false]) {
    it(`a DMTP client sends a refused call to another instance (${useMux ? 'multiplexed' : 'unary'} path)`, async function () {
      const prefix = `/dmtp-test/${nameFor(this)}`;
      const registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
      const busy = gated('busy');
      const servers: RpcServer[] = [];
      let c: ReturnType<typeof client<typeof EchoService>> | undefined;
      try {
        for (const [label, handlers, limit] of [
          ['busy', busy.handlers, 1],
          ['free', echoHandlers('free'), Infinity],
        ] as const) {
          const s = new RpcServer({
            registry,
            services: [{ name: 'adm', definition: EchoService, handlers }],
            instance: { instanceId: label },
            maxConcurrentCalls: limit,
            mux: useMux,
            drainDelayMs: 0,
          });
          servers.push(s);
          await s.start();
        }
        c = client(registry, 'adm', EchoService, { strategy: 'round-robin' }); // reads both instances
        const holder = new UnaryTransport(servers[0].address);
        const held = holder.invoke(call(EchoService.sleep));
        await running(servers[0], 1);
        const answers: string[] = [];
        for (let i = 0; i < 6; i++) answers.push((await c.whoami(Buffer.alloc(0))).toString());
        assert.deepEqual(answers, Array(6).fill('free'));
        assert.ok(servers[0].admission.refusedTotal >= 1, 'round robin sent some to the busy one');
        busy.release();
        await held;
        holder.close();
      } finally {
        busy.release();
        await c?.close();
        for (const s of servers) await s.stop();
        await registry.close();
      }
    });
  }

  it('refuses a limit that is not a whole number of at least 1', () => {
    for (const bad of [0, -1, 1.5, NaN]) {
      assert.throws(
        () =>
          new RpcServer({
            services: [{ name: 'adm', definition: EchoService, handlers: echoHandlers('a') }],
            maxConcurrentCalls: bad,
          }),
        (err: unknown) =>
          err instanceof InvalidArgumentError &&
          err.message === `maxConcurrentCalls must be a whole number ≥ 1 or Infinity (got ${bad})`,
      );
    }
  });
});
