/**
 * bench rpc (fast path): the same echo service and load — 100-byte payload, 64 calls in flight, the server in a
 * separate process — over DMTP's multiplexed path (MuxTransport → createMuxService), plain grpc-js unary (the
 * same server's unary echo method) and Moleculer 0.14 over its TCP transporter, all in one run.
 *
 *   npx tsx -e "require('./bench/rpc-fast').run().then(f=>console.log(f))"
 */
import { freePort } from '../common';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { MuxTransport } from '../rpc/mux';
import { startEchoChild } from '../test/support/mux-child';
import { ECHO } from '../test/support/mux-echo';
import { percentile, ratioFigure, round, type Figures } from './results';

const PAYLOAD_BYTES = 100;
const IN_FLIGHT = 64;
const WARMUP_MS = Number(process.env.BENCH_WARMUP_MS ?? 1_500);
const MEASURE_MS = Number(process.env.BENCH_MEASURE_MS ?? 5_000);
const DEADLINE_MS = 10_000;

interface Measured {
  callsPerS: number;
  p50Ms: number;
  p99Ms: number;
  calls: number;
  /** Calls that failed (warm-up and measuring), and the first one's error. */
  failed: number;
  firstError?: string;
}

/**
 * Keeps IN_FLIGHT calls going; counts and times only those that succeed inside the measuring window. A failed
 * call is counted inside its worker (an early rejection would otherwise go unhandled until the sleeps are over,
 * and Node ends the process on it) and the worker pauses before its next call.
 */
async function measure(call: () => Promise<unknown>): Promise<Measured> {
  const latencies: number[] = [];
  let failed = 0;
  let firstError: string | undefined;
  let start = Infinity;
  let end = Infinity;
  let stop = false;
  const worker = async () => {
    while (!stop) {
      const t0 = performance.now();
      try {
        await call();
      } catch (err) {
        failed++;
        firstError ??= (err as Error)?.message ?? String(err);
        await sleep(10); // a call that fails at once must not starve the timers of the loop
        continue;
      }
      const t1 = performance.now();
      if (t1 >= start && t1 < end) latencies.push(t1 - t0);
    }
  };
  const workers = Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  await sleep(WARMUP_MS);
  start = performance.now();
  end = start + MEASURE_MS;
  await sleep(MEASURE_MS);
  stop = true;
  await workers;
  latencies.sort((a, b) => a - b);
  return {
    // nothing succeeded: no rate (left out of the results), never 0
    callsPerS: latencies.length > 0 ? latencies.length / (MEASURE_MS / 1000) : NaN,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
    calls: latencies.length,
    failed,
    firstError,
  };
}

/** " (N calls failed: first error)" when some did, '' otherwise: for notes. */
function failures(m: Measured): string {
  return m.failed > 0 ? ` (${m.failed} calls failed: ${m.firstError})` : '';
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function benchFast(address: string, payload: Buffer): Promise<Measured> {
  const t = new MuxTransport({ address });
  try {
    return await measure(() =>
      t.invoke({
        method: ECHO,
        request: payload,
        metadata: new grpc.Metadata(),
        deadline: Date.now() + DEADLINE_MS,
      }),
    );
  } finally {
    t.close();
  }
}

async function benchUnary(address: string, payload: Buffer): Promise<Measured> {
  const identity = (b: Buffer) => b;
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const call = () =>
    new Promise<Buffer>((resolve, reject) =>
      client.makeUnaryRequest(
        ECHO,
        identity,
        identity,
        payload,
        new grpc.Metadata(),
        { deadline: Date.now() + DEADLINE_MS },
        (err, res) => (err ? reject(err) : resolve(res!)),
      ),
    );
  try {
    return await measure(call);
  } finally {
    client.close();
  }
}

async function benchMoleculer(port: number): Promise<Measured> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { ServiceBroker } = require('moleculer');
  const broker = new ServiceBroker({
    nodeID: 'bench-client',
    logger: false,
    transporter: {
      type: 'TCP',
      options: { udpDiscovery: false, urls: [`127.0.0.1:${port}/echo-server`] },
    },
  });
  await broker.start();
  await broker.waitForServices('echo', 10_000);
  const params = { s: 'x'.repeat(PAYLOAD_BYTES) };
  try {
    return await measure(() => broker.call('echo.echo', params, { timeout: DEADLINE_MS }));
  } finally {
    await broker.stop();
  }
}

export async function run(): Promise<Figures> {
  const payload = Buffer.alloc(PAYLOAD_BYTES, 7);
  const child = await startEchoChild({ moleculerPort: await freePort() });
  try {
    const fast = await benchFast(child.info.grpc, payload);
    const unary = await benchUnary(child.info.grpc, payload);
    const mol = await benchMoleculer(child.info.moleculerPort!);
    const load = `${PAYLOAD_BYTES} B echo, ${IN_FLIGHT} in flight, server in another process`;
    const lat = (m: Measured, which: 'p50Ms' | 'p99Ms') => ({
      value: round(m[which], 3),
      unit: 'ms',
      ...(m.failed > 0 ? { note: failures(m).trim() } : {}),
    });
    const both = (m: Measured, baseline: Measured) => `${load}${failures(m)}${failures(baseline)}`;
    return {
      'rpc.fast.calls_per_s': { value: round(fast.callsPerS), unit: 'calls/s', note: load + failures(fast) },
      'rpc.unary.calls_per_s': {
        value: round(unary.callsPerS),
        unit: 'calls/s',
        note: load + failures(unary),
      },
      'rpc.moleculer.calls_per_s': {
        value: round(mol.callsPerS),
        unit: 'calls/s',
        note: `Moleculer 0.14 TCP, ${load}${failures(mol)}`,
      },
      'rpc.fast_vs_unary.ratio': ratioFigure(fast.callsPerS, unary.callsPerS, 'calls/s', {
        goal: 'ratio >= 8',
        note: `DMTP fast path; baseline: grpc-js unary; ${both(fast, unary)}`,
      }),
      'rpc.fast_vs_moleculer.ratio': ratioFigure(fast.callsPerS, mol.callsPerS, 'calls/s', {
        goal: 'ratio >= 1.2',
        note: `DMTP fast path; baseline: Moleculer 0.14 TCP; ${both(fast, mol)}`,
      }),
      'rpc.fast.p50_ms': lat(fast, 'p50Ms'),
      'rpc.fast.p99_ms': lat(fast, 'p99Ms'),
      'rpc.unary.p50_ms': lat(unary, 'p50Ms'),
      'rpc.unary.p99_ms': lat(unary, 'p99Ms'),
      'rpc.moleculer.p50_ms': lat(mol, 'p50Ms'),
      'rpc.moleculer.p99_ms': lat(mol, 'p99Ms'),
    };
  } finally {
    await child.stop();
  }
}
