/**
 * What a transaction costs, against the same business calls without one, in the same run:
 *
 * - the coordinator (coordinator/main.ts, etcd log) and two participant services
 *   (test/support/bench-participant.ts: a no-op resource through the txapi Participant SDK, file branch
 *   store, served by rpc's server) each in its own process; this process is the client: DMTP's rpc client
 *   (multiplexed path, through the registry) with txClientMiddleware, and createDmtp;
 * - `tx.2pc.*`: transactions of 2 business calls + commit at fixed concurrency; `tx.2pc_vs_baseline.ratio`
 *   divides by the same 2 calls on the same client with no transaction (rounds alternate). Goal ≥ 0.5;
 * - `tx.2pc_unary.tps`: the same 2PC with the business calls over grpc-js unary (a client that never takes the
 *   multiplexed path), divided by the same 2 unary calls with no transaction (rounds alternate): the cost of a
 *   transaction to services called the way plain grpc-js callers call them. Reported, not the goal's figure;
 * - `tx.2pc_file_log.tps`: the same 2PC through a second coordinator on its file log (DMTP_TX_LOG=file:…, no
 *   etcd in the transaction path), alternating with the same baseline;
 * - `tx.1pc.tps` (one call + commit: one-phase), `tx.abort.tps` (2 calls + rollback);
 * - `coordinator.rss_10k_inflight_mb`: the coordinator's VmRSS with 10,000 ACTIVE transactions of 2 enlisted
 *   branches each (begun lazily by Enlist). Goal ≤ 256.
 *
 * Environment: TX_CONCURRENCY (64), TX_ROUND_MS (4000), TX_ROUNDS (2); BENCH_COORDINATOR_NODE_ARGS and
 * BENCH_PARTICIPANT_NODE_ARGS (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`) to profile the children.
 */
import { Etcd3 } from 'etcd3';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { mintXid } from '../common';
import { EtcdRegistry } from '../registry';
import { client } from '../rpc';
import { createDmtp, txClientMiddleware } from '../txapi';
import { Metadata } from '@grpc/grpc-js';
import { CoordinatorService, type EnlistRequest } from '../proto';
import { MuxTransport } from '../rpc/mux';
import { UnaryTransport } from '../rpc/transport-unary';
import { allStarted, cpuMs, rssMb, spawnReady, type ReadyChild } from '../test/support/bench-process';
import { NOOP_DEFINITION, type ParticipantSpec } from '../test/support/bench-participant';
import { ETCD_ENDPOINTS } from '../test/support/env';
import { printTable, ratioFigure, round, type Figures } from './results';
import { drive, failures, merge, type Sample } from './support-tx';

const CONCURRENCY = Number(process.env.TX_CONCURRENCY ?? 64);
const ROUND_MS = Number(process.env.TX_ROUND_MS ?? 4_000);
const ROUNDS = Number(process.env.TX_ROUNDS ?? 2);
const IN_FLIGHT_TXS = 10_000;
/** Which parts run (profiling one part): any of 2pc (with its baseline), 2pc-unary, 2pc-file, 1pc, abort, rss. */
const PARTS = new Set((process.env.TX_PARTS ?? '2pc,2pc-unary,2pc-file,1pc,abort,rss').split(','));
const PAYLOAD = Buffer.alloc(64, 7);

const nodeArgs = (name: string) => (process.env[name] ?? '').split(/\s+/).filter(Boolean);

interface ChildInfo {
  address: string;
  id?: string;
  pid: number;
}

export async function run(): Promise<Figures> {
  const tag = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  const prefix = `/dmtp-bench/tx-${tag}`;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dmtp-bench-tx-'));
  const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
  const children: ReadyChild<ChildInfo>[] = [];
  const registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix });
  const figures: Figures = {};
  const closers: (() => unknown)[] = [];
  try {
    const coordinatorId = `bench-${tag}`;
    const coordinator = await spawnReady<ChildInfo>(
      'coordinator/main.ts',
      {
        ETCD_ENDPOINTS: ETCD_ENDPOINTS.join(','),
        DMTP_ETCD_PREFIX: prefix,
        DMTP_COORDINATOR_ID: coordinatorId,
        DMTP_EVENT_SINK: 'none',
        DMTP_LOG_LEVEL: 'error',
      },
      nodeArgs('BENCH_COORDINATOR_NODE_ARGS'),
    );
    children.push(coordinator);
    // The same 2PC against a lone coordinator on its file log (no etcd in the transaction path).
    const fileCoordinatorId = `bench-file-${tag}`;
    const fileCoordinator = PARTS.has('2pc-file')
      ? await spawnReady<ChildInfo>(
          'coordinator/main.ts',
          {
            ETCD_ENDPOINTS: ETCD_ENDPOINTS.join(','),
            DMTP_ETCD_PREFIX: prefix,
            DMTP_COORDINATOR_ID: fileCoordinatorId,
            DMTP_TX_LOG: `file:${path.join(dir, 'coordinator.txlog')}`,
            DMTP_REGISTER: '0',
            DMTP_EVENT_SINK: 'none',
            DMTP_LOG_LEVEL: 'error',
          },
          nodeArgs('BENCH_COORDINATOR_NODE_ARGS'),
        )
      : undefined;
    if (fileCoordinator) children.push(fileCoordinator);
    const services = ['bench-a', 'bench-b'];
    const parts = await allStarted(
      services.map((service) =>
        spawnReady<ChildInfo>(
          'test/support/bench-participant.ts',
          {
            BENCH_PARTICIPANT: JSON.stringify({
              service,
              instanceId: `${service}-1`,
              prefix,
              etcd: ETCD_ENDPOINTS,
              storePath: path.join(dir, `${service}.branches`),
            } satisfies ParticipantSpec),
          },
          nodeArgs('BENCH_PARTICIPANT_NODE_ARGS'),
        ),
      ),
      (c) => children.push(c),
    );

    const [a, b] = services.map((s) =>
      client(registry, s, NOOP_DEFINITION, { middleware: [txClientMiddleware], timeoutMs: 30_000 }),
    );
    // The same services called over grpc-js unary (a client whose transport is never the multiplexed path), as a
    // legacy caller's or a plain grpc-js service's calls are: the path DESIGN.md's cost estimate counts in.
    const [ua, ub] = services.map((s) =>
      client(registry, s, NOOP_DEFINITION, {
        middleware: [txClientMiddleware],
        timeoutMs: 30_000,
        transportFactory: (i) => new UnaryTransport(i.address),
      }),
    );
    closers.push(
      () => a.close(),
      () => b.close(),
      () => ua.close(),
      () => ub.close(),
    );
    await Promise.all([a.ready(), b.ready(), ua.ready(), ub.ready()]);
    if (a.instances().length !== 1 || b.instances().length !== 1)
      throw new Error('participants are not in the registry');
    const dmtp = createDmtp({
      coordinator: { id: coordinatorId, address: coordinator.info.address },
      initiator: 'bench',
      defaultTimeoutMs: 30_000,
    });
    closers.push(() => dmtp.close());
    const dmtpFile = fileCoordinator
      ? createDmtp({
          coordinator: { id: fileCoordinatorId, address: fileCoordinator.info.address },
          initiator: 'bench',
          defaultTimeoutMs: 30_000,
        })
      : undefined;
    if (dmtpFile) closers.push(() => dmtpFile.close());

    const twoCalls = async () => {
      await a.noop(PAYLOAD);
      await b.noop(PAYLOAD);
    };
    const committed = async (calls: () => Promise<void>, via = dmtp): Promise<number> => {
      const tx = await via.begin();
      await tx.run(calls);
      const t = performance.now();
      const o = await tx.commit();
      if (o.status !== 'committed') throw new Error(`not committed: ${JSON.stringify(o)}`);
      return performance.now() - t;
    };
    const aborted = async (): Promise<number> => {
      const tx = await dmtp.begin();
      await tx.run(twoCalls);
      const t = performance.now();
      const o = await tx.rollback('bench: rolled back on purpose');
      if (o.status !== 'aborted') throw new Error(`not aborted: ${JSON.stringify(o)}`);
      return performance.now() - t;
    };
    const twoUnaryCalls = async () => {
      await ua.noop(PAYLOAD);
      await ub.noop(PAYLOAD);
    };
    const twoPc = () => committed(twoCalls);
    const twoPcUnary = () => committed(twoUnaryCalls);
    const twoPcFile = () => committed(twoCalls, dmtpFile);
    const onePc = () => committed(() => a.noop(PAYLOAD).then(() => undefined));

    // warm-up: connections, streams, JIT on every path
    await drive(twoCalls, 1_000, CONCURRENCY);
    await drive(twoPc, 1_500, CONCURRENCY);
    if (dmtpFile) await drive(twoPcFile, 1_500, CONCURRENCY);
    if (PARTS.has('2pc-unary')) {
      await drive(twoUnaryCalls, 1_000, CONCURRENCY);
      await drive(twoPcUnary, 1_500, CONCURRENCY);
    }

    // CPU per operation in each process (client, coordinator, participants), from /proc/<pid>/stat, and
    // etcd's own (it shares the machine), from its /metrics (NaN when unreadable: then left out of the note)
    const pidsWith = (coordinatorPid: number) => [
      process.pid,
      coordinatorPid,
      ...parts.map((p) => p.info.pid),
    ];
    const cpu = { base: [0, 0, 0, 0, 0], tx: [0, 0, 0, 0, 0], txFile: [0, 0, 0, 0, 0] };
    const measured = async (
      into: number[],
      op: () => Promise<number | void>,
      pids = pidsWith(coordinator.info.pid),
    ) => {
      const before = [...pids.map(cpuMs), await etcdCpuMs()];
      const s = await drive(op, ROUND_MS, CONCURRENCY);
      const after = [...pids.map(cpuMs), await etcdCpuMs()];
      after.forEach((v, i) => (into[i] += v - before[i]));
      return s;
    };
    const base: Sample[] = [];
    const tx2: Sample[] = [];
    const txFile: Sample[] = [];
    const baseUnary: Sample[] = [];
    const txUnary: Sample[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      base.push(await measured(cpu.base, twoCalls));
      if (PARTS.has('2pc')) tx2.push(await measured(cpu.tx, twoPc));
      if (fileCoordinator)
        txFile.push(await measured(cpu.txFile, twoPcFile, pidsWith(fileCoordinator.info.pid)));
      if (PARTS.has('2pc-unary')) {
        baseUnary.push(await drive(twoUnaryCalls, ROUND_MS, CONCURRENCY));
        txUnary.push(await drive(twoPcUnary, ROUND_MS, CONCURRENCY));
      }
    }
    const one = merge(PARTS.has('1pc') ? [await drive(onePc, ROUND_MS, CONCURRENCY)] : []);
    const abort = merge(PARTS.has('abort') ? [await drive(aborted, ROUND_MS, CONCURRENCY)] : []);
    const bl = merge(base);
    const t2 = merge(tx2);
    const tf = merge(txFile);
    const perOp = (ms: number[], n: number) =>
      `client ${Math.round((ms[0] * 1000) / n)}, coordinator ${Math.round((ms[1] * 1000) / n)}, participants ${Math.round(((ms[2] + ms[3]) * 1000) / n)}` +
      (Number.isFinite(ms[4]) ? `, etcd ${Math.round((ms[4] * 1000) / n)}` : '');
    const cpuNote = `CPU µs per transaction: ${perOp(cpu.tx, t2.ok)}; per baseline call pair: ${perOp(cpu.base, bl.ok)}`;
    const load = `${CONCURRENCY} in flight, ${ROUNDS}×${ROUND_MS} ms alternating with the baseline, etcd log`;
    // A part not run (TX_PARTS) leaves its figures absent, never NaN.
    if (PARTS.has('2pc')) {
      figures['tx.2pc.tps'] = ratioFigure(t2.rate, bl.rate, 'tx/s', {
        note: `2 business calls + commit (2PC); baseline: the same 2 calls, no transaction (calls-pairs/s); ${load}${failures(t2)}`,
      });
      figures['tx.2pc.p50_ms'] = ratioFigure(t2.p50, bl.p50, 'ms', {
        note: `whole transaction; the Commit call alone p50 ${round(t2.partP50, 2)} ms`,
      });
      figures['tx.2pc.p99_ms'] = ratioFigure(t2.p99, bl.p99, 'ms', {
        note: `whole transaction; the Commit call alone p99 ${round(t2.partP99, 2)} ms`,
      });
      figures['tx.2pc_vs_baseline.ratio'] = ratioFigure(t2.rate, bl.rate, 'tx/s', {
        goal: 'ratio >= 0.5',
        note: `2PC tx/s; baseline: the same 2 calls with no transaction (call-pairs/s), same run${failures(t2)}${failures(bl)}. ${cpuNote}`,
      });
    }
    if (PARTS.has('2pc-unary')) {
      const bu = merge(baseUnary);
      const tu = merge(txUnary);
      figures['tx.2pc_unary.tps'] = ratioFigure(tu.rate, bu.rate, 'tx/s', {
        note: `the same 2PC with both business calls over grpc-js unary (coordination still on the multiplexed path), p50 ${round(tu.p50, 2)} ms, p99 ${round(tu.p99, 2)} ms; baseline: the same 2 unary calls, no transaction (p50 ${round(bu.p50, 2)} ms), alternating; the path DESIGN.md's cost estimate counts in, not the goal's (tx.2pc_vs_baseline.ratio)${failures(tu)}${failures(bu)}`,
      });
    }
    if (fileCoordinator) {
      figures['tx.2pc_file_log.tps'] = ratioFigure(tf.rate, bl.rate, 'tx/s', {
        note: `the same 2PC through a lone coordinator on its file log (fdatasync per group, no etcd), p50 ${round(tf.p50, 2)} ms, p99 ${round(tf.p99, 2)} ms; the ratio is to the same baseline (no transaction). CPU µs per transaction: ${perOp(cpu.txFile, tf.ok)}${failures(tf)}`,
      });
    }
    if (PARTS.has('1pc'))
      figures['tx.1pc.tps'] = ratioFigure(one.rate, bl.rate, 'tx/s', {
        note: `1 business call + commit (one phase: a onePhase record, no prepare round), p50 ${round(one.p50, 2)} ms, p99 ${round(one.p99, 2)} ms; baseline: 2 calls, no transaction${failures(one)}`,
      });
    if (PARTS.has('abort'))
      figures['tx.abort.tps'] = ratioFigure(abort.rate, bl.rate, 'tx/s', {
        note: `2 business calls + rollback, p50 ${round(abort.p50, 2)} ms, p99 ${round(abort.p99, 2)} ms; baseline: 2 calls, no transaction${failures(abort)}`,
      });

    // ---- coordinator memory with 10,000 transactions in flight --------------------------------------------
    if (!PARTS.has('rss')) return figures;
    await sleep(1_000); // phase 2 of the last transactions finishes
    const rssBefore = rssMb(coordinator.info.pid);
    // Enlist begins each transaction lazily; sent over the coordinator's multiplexed path (20,000 calls)
    const mux = new MuxTransport({ address: coordinator.info.address });
    closers.push(() => mux.close());
    const enlist = async (req: EnlistRequest) => {
      const def = CoordinatorService.enlist;
      await mux.invoke({
        method: def.path,
        request: def.requestSerialize(req),
        metadata: new Metadata(),
        deadline: Date.now() + 30_000,
      });
    };
    const refs = parts.map((p, i) => ({
      branchId: `noop@${services[i]}-1`,
      service: services[i],
      instanceId: `${services[i]}-1`,
      address: p.info.address,
      resource: 'noop',
    }));
    let next = 0;
    let enlisted = 0;
    const t0 = Date.now();
    await Promise.all(
      Array.from({ length: 128 }, async () => {
        while (next < IN_FLIGHT_TXS) {
          next++;
          const xid = mintXid(coordinatorId);
          for (const branch of refs) await enlist({ xid, branch });
          enlisted++;
        }
      }),
    );
    const enlistMs = Date.now() - t0;
    await sleep(500);
    const rss = Math.max(rssMb(coordinator.info.pid), (await sleep(250), rssMb(coordinator.info.pid)));
    if (enlisted === IN_FLIGHT_TXS && Number.isFinite(rss)) {
      figures['coordinator.rss_10k_inflight_mb'] = {
        value: round(rss),
        unit: 'MB',
        baseline: round(rssBefore),
        goal: '<= 256',
        note: `VmRSS with ${IN_FLIGHT_TXS} ACTIVE transactions of 2 enlisted branches (begun by Enlist over the multiplexed path in ${enlistMs} ms); baseline: the same coordinator just before, after the throughput runs`,
      };
    }
  } finally {
    for (const c of closers.reverse()) await Promise.resolve(c()).catch(() => undefined);
    await Promise.all(children.map((c) => c.stop()));
    await registry.close().catch(() => undefined);
    await etcd
      .delete()
      .prefix(prefix)
      .catch(() => undefined);
    etcd.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return figures;
}

/** etcd's process CPU so far in ms (process_cpu_seconds_total of the first endpoint's /metrics), NaN if unread. */
async function etcdCpuMs(): Promise<number> {
  try {
    const res = await fetch(new URL('/metrics', ETCD_ENDPOINTS[0]), { signal: AbortSignal.timeout(2_000) });
    const m = /^process_cpu_seconds_total ([0-9.e+]+)$/m.exec(await res.text());
    return m ? Number(m[1]) * 1000 : NaN;
  } catch {
    return NaN;
  }
}

if (require.main === module) {
  void run().then((f) => printTable('bench tx', f));
}
