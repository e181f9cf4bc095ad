/**
 * Calls through the registry, measured against their baselines in the same run. Servers run in a child process
 * (test/support/rpc-echo-process.ts), the clients here:
 *
 * - `rpc.dynamic_vs_static.ratio`: unary calls/s of a plain grpc-js client on `dmtp:///svc` (3 instances,
 *   round_robin, resolved through the registry) ÷ the same client on one static address; 64 calls in flight,
 *   100-byte payloads, alternating rounds so both see the same machine load. Goal ≥ 0.9.
 * - `registry.join_to_first_call` / `registry.leave_to_last_call`: register() → first call reaching the new
 *   instance, deregister() → last call reaching the leaving one, under a steady load from a DMTP client; both
 *   ends timed in the child. Goal p99 ≤ 100 ms.
 */
import { Client, credentials, Metadata } from '@grpc/grpc-js';
import { performance } from 'node:perf_hooks';
import { EtcdRegistry } from '../registry';
import { client, setupDmtpResolver, tracingClientMiddleware } from '../rpc';
import { EchoService } from '../test/support/echo-service';
import { ETCD_ENDPOINTS } from '../test/support/env';
import { nextMessage, spawnEchoProcess, stopEchoProcess } from '../test/support/rpc-echo-process';
import { installBenchTracing } from '../test/support/tracing';
import { percentile, printTable, ratioFigure, round, type Figures } from './results';

const SERVICE = 'svc';
const IN_FLIGHT = 64;
const PAYLOAD = Buffer.alloc(100, 7);
const ROUND_MS = 3_000;
const ROUNDS = Number(process.env.ROUNDS ?? 2);
const JOIN_LEAVE_REPETITIONS = 20;

interface Sample {
  calls: number;
  ms: number;
  latencies: number[];
}

/** `IN_FLIGHT` loops of echo calls through `call` for `ms`; calls/s and per-call latencies. */
async function drive(call: () => Promise<unknown>, ms: number): Promise<Sample> {
  const latencies: number[] = [];
  const start = performance.now();
  const end = start + ms;
  const loop = async () => {
    while (performance.now() < end) {
      const t = performance.now();
      await call();
      latencies.push(performance.now() - t);
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, loop));
  return { calls: latencies.length, ms: performance.now() - start, latencies };
}

function plainEcho(c: Client): () => Promise<Buffer> {
  const id = (b: Buffer) => b;
  return () =>
    new Promise<Buffer>((resolve, reject) =>
      c.makeUnaryRequest(
        EchoService.echo.path,
        id,
        id,
        PAYLOAD,
        new Metadata(),
        { deadline: Date.now() + 10_000 },
        (err, v) => (err ? reject(err) : resolve(v!)),
      ),
    );
}

function merge(samples: Sample[]): { rate: number; p50: number; p99: number } {
  const calls = samples.reduce((n, s) => n + s.calls, 0);
  const ms = samples.reduce((n, s) => n + s.ms, 0);
  const lat = samples.flatMap((s) => s.latencies).sort((a, b) => a - b);
  return { rate: (calls / ms) * 1000, p50: percentile(lat, 50), p99: percentile(lat, 99) };
}

export async function run(): Promise<Figures> {
  const prefix = `/dmtp-bench/rpc-registry-${Date.now().toString(36)}`;
  const { child, addresses } = await spawnEchoProcess({
    prefix,
    service: SERVICE,
    labels: ['s1', 's2', 's3'],
    leaseTtlSeconds: 10,
  });
  const registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
  const removeResolver = setupDmtpResolver(registry);
  const dynamic = new Client(`dmtp:///${SERVICE}`, credentials.createInsecure());
  const fixed = new Client(addresses.s1, credentials.createInsecure());
  const figures: Figures = {};
  const closers: (() => unknown)[] = [];
  try {
    // warm both channels (connections, JIT) before measuring
    await drive(plainEcho(dynamic), 1_000);
    await drive(plainEcho(fixed), 1_000);
    const dyn: Sample[] = [];
    const stat: Sample[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      stat.push(await drive(plainEcho(fixed), ROUND_MS));
      dyn.push(await drive(plainEcho(dynamic), ROUND_MS));
    }
    const d = merge(dyn);
    const s = merge(stat);
    figures['rpc.dynamic_vs_static.ratio'] = ratioFigure(d.rate, s.rate, 'calls/s', {
      goal: 'ratio >= 0.9',
      note: `grpc-js unary on dmtp:///${SERVICE} (3 instances); baseline: the same client on one static address; ${IN_FLIGHT} in flight, 100 B`,
    });
    figures['rpc.dynamic.calls_per_s'] = ratioFigure(d.rate, s.rate, 'calls/s', {
      note: 'baseline: static address',
    });
    figures['rpc.dynamic.p50_ms'] = ratioFigure(d.p50, s.p50, 'ms', { note: 'baseline: static address' });
    figures['rpc.dynamic.p99_ms'] = ratioFigure(d.p99, s.p99, 'ms', { note: 'baseline: static address' });

    // DMTP's own client through the registry: the multiplexed path to the same 3 instances
    const c = client(registry, SERVICE, EchoService);
    closers.push(() => c.close());
    await c.ready();
    const dmtpEcho = () => c.echo(PAYLOAD);
    await drive(dmtpEcho, 1_000);
    const viaRegistry: Sample[] = [];
    for (let r = 0; r < ROUNDS; r++) viaRegistry.push(await drive(dmtpEcho, ROUND_MS));
    const f = merge(viaRegistry);
    const fastNote =
      'DMTP client via the registry, 3 instances, multiplexed path; baseline: grpc-js unary, static address';
    figures['rpc.fast_via_registry.calls_per_s'] = ratioFigure(f.rate, s.rate, 'calls/s', { note: fastNote });
    figures['rpc.fast_via_registry.p50_ms'] = ratioFigure(f.p50, s.p50, 'ms', { note: fastNote });
    figures['rpc.fast_via_registry.p99_ms'] = ratioFigure(f.p99, s.p99, 'ms', { note: fastNote });

    // What tracing costs the caller: the same DMTP client with tracingClientMiddleware, first with no SDK
    // registered (the middleware's no-op calls), then with the OpenTelemetry SDK recording every span (batched to
    // an exporter that drops them), each against the same client without the middleware, rounds alternating.
    const traced = client(registry, SERVICE, EchoService, { middleware: [tracingClientMiddleware()] });
    closers.push(() => traced.close());
    await traced.ready();
    const tracedEcho = () => traced.echo(PAYLOAD);
    await drive(tracedEcho, 1_000);
    const off: Sample[] = [];
    const noSdk: Sample[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      off.push(await drive(dmtpEcho, ROUND_MS));
      noSdk.push(await drive(tracedEcho, ROUND_MS));
    }
    const sdk = installBenchTracing();
    const offWithSdk: Sample[] = [];
    const recorded: Sample[] = [];
    try {
      await drive(tracedEcho, 1_000);
      for (let r = 0; r < ROUNDS; r++) {
        offWithSdk.push(await drive(dmtpEcho, ROUND_MS));
        recorded.push(await drive(tracedEcho, ROUND_MS));
      }
    } finally {
      await sdk.uninstall();
    }
    const [o1, n1, o2, r2] = [off, noSdk, offWithSdk, recorded].map(merge);
    figures['rpc.tracing_no_sdk_vs_off.ratio'] = ratioFigure(n1.rate, o1.rate, 'calls/s', {
      note: `DMTP client with tracingClientMiddleware and no OpenTelemetry SDK; baseline: the same client without it (multiplexed path via the registry, ${IN_FLIGHT} in flight)`,
    });
    figures['rpc.tracing_recorded_vs_off.ratio'] = ratioFigure(r2.rate, o2.rate, 'calls/s', {
      note: `the same with the SDK recording every CLIENT span (BatchSpanProcessor, ${sdk.exported()} spans exported and dropped); baseline: the client without the middleware, same SDK registered`,
    });

    // join / leave under a steady load from DMTP's own client
    let loading = true;
    const loader = Promise.all(
      Array.from({ length: 16 }, async () => {
        while (loading) await c.echo(PAYLOAD).catch(() => undefined);
      }),
    );
    const joins: number[] = [];
    const registerCalls: number[] = [];
    const leaves: number[] = [];
    try {
      for (let i = 0; i < JOIN_LEAVE_REPETITIONS; i++) {
        const label = `j${i}`;
        const joined = nextMessage(child, 'joined');
        child.send({ type: 'join', label });
        const j = await joined;
        joins.push(j.firstCallAt - j.registerAt);
        registerCalls.push(j.registeredAt - j.registerAt);
        const left = nextMessage(child, 'left');
        child.send({ type: 'leave', label, waitMs: 300 });
        const l = await left;
        leaves.push(Math.max(0, l.lastCallAt - l.deregisterAt));
      }
    } finally {
      loading = false; // also when a join or leave timed out: the loader must not outlive the run
      await loader;
    }
    joins.sort((a, b) => a - b);
    registerCalls.sort((a, b) => a - b);
    leaves.sort((a, b) => a - b);
    const note = `${JOIN_LEAVE_REPETITIONS} repetitions, DMTP client round-robin, 16 in flight`;
    figures['registry.join_to_first_call.p50_ms'] = {
      value: round(percentile(joins, 50)),
      unit: 'ms',
      note: `${note}; register() alone p50 ${round(percentile(registerCalls, 50))} ms`,
    };
    figures['registry.join_to_first_call.p99_ms'] = {
      value: round(percentile(joins, 99)),
      unit: 'ms',
      goal: '<= 100',
    };
    figures['registry.leave_to_last_call.p50_ms'] = {
      value: round(percentile(leaves, 50)),
      unit: 'ms',
      note,
    };
    figures['registry.leave_to_last_call.p99_ms'] = {
      value: round(percentile(leaves, 99)),
      unit: 'ms',
      goal: '<= 100',
    };
  } finally {
    for (const close of closers.reverse()) await Promise.resolve(close()).catch(() => undefined);
    dynamic.close();
    fixed.close();
    removeResolver();
    await stopEchoProcess(child);
    await registry.close();
  }
  return figures;
}

if (require.main === module) {
  void run().then((f) => printTable('bench rpc-registry', f));
}
