import { strict as assert } from 'node:assert';
import type { ChildProcess } from 'node:child_process';
import { Etcd3 } from 'etcd3';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { mintXid } from '../../../common';
import { Metadata } from '@grpc/grpc-js';
import { CoordinatorService } from '../../../proto';
import { TxState } from '../../../proto/gen/dmtp/v1/types';
import { UnaryTransport } from '../../../rpc';
import { coordinatorClient } from '../../support/coordinator-client';
import { waitFor } from '../../support/coordinator-wait';
import { Kafka, logLevel, type Admin } from 'kafkajs';
import { ETCD_ENDPOINTS, KAFKA_BROKERS, nameFor } from '../../support/env';
import { tlsEnv } from '../../support/tls';
import { collect, plainLines, runCli, startCli, type CliResult } from './run-cli';

/** One staged event for `topic`. */
const stagedOne = (topic: string) => ({
  topic,
  key: Buffer.from('k'),
  value: Buffer.from('v'),
  headers: {},
  sequence: 0,
});

/** Records in a topic (0 while it does not exist). */
async function recordsIn(admin: Admin, topic: string): Promise<number> {
  const offsets = await admin.fetchTopicOffsets(topic).catch(() => []);
  return offsets.reduce((n, o) => n + Number(o.high), 0);
}

describe('dmtp coordinator (a child process on real etcd)', function () {
  this.timeout(30_000);
  let prefix: string;
  let child: ChildProcess | undefined;

  /** Starts `dmtp coordinator --json …` and waits for its ready line. */
  async function start(args: string[], env: Record<string, string> = {}) {
    child = startCli(['coordinator', '--json', ...args], { DMTP_LOG_LEVEL: 'warn', ...env });
    // Killed after 60 s if a test has not stopped it (afterEach kills it sooner, whatever the test did).
    const done: Promise<CliResult> = collect(child, 60_000);
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    const ready = await waitFor(
      'the ready line',
      () => out.includes('\n') && JSON.parse(out.split('\n')[0]),
      20_000,
    );
    return { ready, done };
  }

  /** `dmtp coordinator` relaying staged events to the test Kafka. */
  const startWithKafka = (id: string, more: string[] = []) =>
    start(['--id', id, '--prefix', prefix, '--brokers', KAFKA_BROKERS.join(','), ...more]);

  beforeEach(function () {
    prefix = `/dmtp-test/${nameFor(this)}`;
  });
  afterEach(async () => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    child = undefined;
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    await etcd.delete().prefix(prefix);
    etcd.close();
  });

  it('serves mutual TLS with DMTP_TLS_*: tx list and services --health reach it with them, not without', async () => {
    const env = tlsEnv();
    const { ready, done } = await start(['--id', 'cli-tls', '--prefix', prefix], env);
    const txs = await runCli(['tx', 'list', '--coordinator', ready.address, '--json'], env);
    assert.equal(txs.code, 0, txs.stderr);
    assert.deepEqual(JSON.parse(txs.stdout), []);
    const health = await runCli(
      ['services', 'dmtp-coordinator', '--prefix', prefix, '--health', '--json'],
      env,
    );
    assert.deepEqual(
      (JSON.parse(health.stdout) as { health: string }[]).map((i) => i.health),
      ['SERVING'],
    );
    const plain = await runCli(['tx', 'list', '--coordinator', ready.address, '--timeout', '2s']);
    assert.equal(plain.code, 1);
    const plainHealth = await runCli([
      'services',
      'dmtp-coordinator',
      '--prefix',
      prefix,
      '--health',
      '--json',
    ]);
    assert.deepEqual(
      (JSON.parse(plainHealth.stdout) as { health: string }[]).map((i) => i.health),
      ['UNREACHABLE'],
    );
    child!.kill('SIGTERM');
    assert.equal((await done).code, 0);
  });

  it('DMTP_TRACING: serves calls in spans of the caller’s trace, to the SDK the process preloads', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'dmtp-cli-tracing-'));
    try {
      const spansFile = path.join(dir, 'spans.jsonl');
      const preload = path.join(__dirname, '..', '..', '..', 'examples', 'otel-file.cjs');
      const env = {
        DMTP_TRACING: '1',
        NODE_OPTIONS: `--require ${JSON.stringify(preload)}`,
        DMTP_SPANS_FILE: spansFile,
      };
      const { ready, done } = await start(['--id', 'cli-trace', '--prefix', prefix, '--no-register'], env);
      // A caller's trace context, as a traced DMTP client sends it.
      const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
      const parentId = '00f067aa0ba902b7';
      const unary = new UnaryTransport(ready.address);
      const metadata = new Metadata();
      metadata.set('traceparent', `00-${traceId}-${parentId}-01`);
      await assert.rejects(
        unary.invoke({
          method: CoordinatorService.get.path,
          request: CoordinatorService.get.requestSerialize({ xid: 'cli-trace:1:1' }),
          metadata,
          deadline: Date.now() + 3_000,
        }),
        (err: Error & { code?: number }) => err.code === 5,
      );
      unary.close();
      child!.kill('SIGTERM');
      assert.equal((await done).code, 0);
      const spans = readFileSync(spansFile, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { name: string; traceId: string; parentSpanId?: string });
      const get = spans.find((l) => l.name === 'dmtp.v1.Coordinator/Get');
      assert.ok(get, `a Get span among ${spans.map((l) => l.name).join(', ')}`);
      assert.equal(get.traceId, traceId);
      assert.equal(get.parentSpanId, parentId);
      // A value that is not yes or no is refused before anything starts.
      const bad = await runCli(['coordinator', '--prefix', prefix], { DMTP_TRACING: 'maybe' });
      assert.equal(bad.code, 1, bad.stderr);
      assert.match(bad.stderr, /DMTP_TRACING expects true or false, not 'maybe'/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serves, registers as dmtp-coordinator for the other commands, and deregisters on SIGTERM', async () => {
    const id = `cli-${Math.random().toString(36).slice(2, 8)}`;
    const { ready, done } = await start(['--id', id, '--prefix', prefix]);
    assert.equal(ready.ready, true);
    assert.equal(ready.id, id);

    const listed = await runCli(['services', 'dmtp-coordinator', '--prefix', prefix, '--json']);
    assert.deepEqual(
      (JSON.parse(listed.stdout) as { instanceId: string; address: string }[]).map((i) => [
        i.instanceId,
        i.address,
      ]),
      [[id, ready.address]],
    );
    const txs = await runCli(['tx', 'list', '--prefix', prefix, '--json']);
    assert.equal(txs.code, 0, txs.stderr);
    assert.deepEqual(JSON.parse(txs.stdout), []);

    child!.kill('SIGTERM');
    // A second one (a supervisor signalling the process group too) must not cut the graceful stop short: with
    // `process.once` it took Node's default action and the process died of it (exit 143, still registered).
    await new Promise((r) => setTimeout(r, 10));
    child!.kill('SIGTERM');
    const exit = await done;
    assert.equal(exit.code, 0, exit.stderr);
    const after = await runCli(['services', 'dmtp-coordinator', '--prefix', prefix, '--json']);
    assert.deepEqual(JSON.parse(after.stdout), [], 'deregistered before it stopped');
  });

  it('refuses an --advertise that is no host:port, before it serves or registers anything', async () => {
    const r = await runCli(['coordinator', '--advertise', 'garbage', '--prefix', prefix], {
      DMTP_LOG_LEVEL: 'silent',
    });
    assert.equal(r.code, 1);
    assert.match(plainLines(r.stderr)[0], /--advertise must be host:port, not 'garbage'/);
    const listed = await runCli(['services', '--prefix', prefix, '--json']);
    assert.deepEqual(JSON.parse(listed.stdout), []);
  });

  it('an unreachable etcd is one line on stderr and exit code 1, within seconds', async () => {
    const r = await runCli(['coordinator', '--etcd', 'http://127.0.0.1:1', '--prefix', prefix], {
      DMTP_LOG_LEVEL: 'silent',
    });
    assert.equal(r.code, 1);
    assert.deepEqual(plainLines(r.stderr), [
      'dmtp coordinator: cannot reach etcd at http://127.0.0.1:1 (connect ECONNREFUSED 127.0.0.1:1)',
    ]);
    assert.ok(r.ms < 5_000, `took ${r.ms} ms`);
  });

  it('--log file:PATH runs a lone coordinator on its own log file, and a second one on that file is refused', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'dmtp-cli-log-'));
    const file = path.join(dir, 'solo.txlog');
    try {
      const { ready, done } = await start(['--id', 'solo', '--log', `file:${file}`, '--no-register']);
      const c = coordinatorClient(ready.address);
      try {
        const xid = mintXid('solo');
        await c.enlist({
          xid,
          branch: { branchId: 'b1', service: 's', instanceId: 'i', address: '127.0.0.1:1', resource: 'r' },
        });
        assert.equal((await c.get({ xid })).transaction!.state, TxState.TX_STATE_ACTIVE);
      } finally {
        c.close();
      }
      assert.ok(existsSync(`${file}.lock`), 'the log file is locked while the coordinator runs');
      const second = await runCli(['coordinator', '--id', 'solo', '--log', `file:${file}`, '--no-register'], {
        DMTP_LOG_LEVEL: 'silent',
      });
      assert.equal(second.code, 1);
      assert.match(second.stderr, new RegExp(`in use by process ${ready.pid}`));
      child!.kill('SIGTERM');
      assert.equal((await done).code, 0);
      assert.ok(!existsSync(`${file}.lock`), 'the lock is released on a clean stop');

      const bad = await runCli(['coordinator', '--log', 'sqlite', '--no-register']);
      assert.equal(bad.code, 1, bad.stderr);
      assert.match(bad.stderr, /--log must be etcd or file:PATH, not 'sqlite'/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('--brokers: a Commit with staged events is published to Kafka; without a sink it is refused', async function () {
    const topic = `${nameFor(this, 40)}-events`;
    const id = `cli-ev-${Math.random().toString(36).slice(2, 6)}`;
    const event = stagedOne(topic);
    const { ready, done } = await startWithKafka(id);
    const c = coordinatorClient(ready.address);
    const kafka = new Kafka({ brokers: KAFKA_BROKERS, logLevel: logLevel.NOTHING });
    const admin = kafka.admin();
    try {
      const res = await c.commit({ xid: mintXid(id), events: [event] });
      assert.equal(res.state, TxState.TX_STATE_COMMITTED, res.abortReason);
      await admin.connect();
      await waitFor('the event in Kafka', async () => (await recordsIn(admin, topic)) === 1);
    } finally {
      await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
      await admin.disconnect();
      c.close();
    }
    child!.kill('SIGTERM');
    assert.equal((await done).code, 0);

    const none = await start(['--id', `${id}-none`, '--prefix', prefix, '--event-sink', 'none']);
    const n = coordinatorClient(none.ready.address);
    try {
      await assert.rejects(n.commit({ xid: mintXid(`${id}-none`), events: [event] }), /no event sink/);
    } finally {
      n.close();
    }
    child!.kill('SIGTERM');
    assert.equal((await none.done).code, 0);
    const bad = await runCli(['coordinator', '--event-sink', 'kafka', '--no-register'], {
      KAFKA_BROKERS: '',
    });
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /need --brokers/);
  });

  it('--no-auto-create-topics: a staged event for a topic Kafka does not have waits, uncreated, until it is made', async function () {
    this.timeout(90_000);
    const topic = `${nameFor(this, 40)}-later`;
    const id = `cli-nac-${Math.random().toString(36).slice(2, 6)}`;
    const event = stagedOne(topic);
    const { ready, done } = await startWithKafka(id, ['--no-auto-create-topics']);
    const c = coordinatorClient(ready.address);
    const admin = new Kafka({ brokers: KAFKA_BROKERS, logLevel: logLevel.NOTHING }).admin();
    try {
      const xid = mintXid(id);
      const res = await c.commit({ xid, events: [event] });
      assert.equal(res.state, TxState.TX_STATE_COMMITTED, res.abortReason);
      await admin.connect();
      // The relay tries five times in 3 s (each answered at once); with auto-create it would have made the topic.
      await new Promise((r) => setTimeout(r, 3_000));
      assert.ok(!(await admin.listTopics()).includes(topic), 'the coordinator created the topic');
      // `tx show` says why the events wait.
      const json = await runCli(['tx', 'show', xid, '--json', '--coordinator', ready.address]);
      assert.equal(json.code, 0, json.stderr);
      const t = JSON.parse(json.stdout) as {
        eventsDelivered: boolean;
        eventsAttempts: number;
        eventsLastError: string;
      };
      assert.equal(t.eventsDelivered, false);
      assert.ok(t.eventsAttempts >= 2, `${t.eventsAttempts} attempts`);
      const why = `topic ${topic}: topic-unavailable, 1 of 1 events not published: `;
      assert.ok(t.eventsLastError.startsWith(why), t.eventsLastError);
      assert.match(t.eventsLastError, /UNKNOWN_TOPIC_OR_PARTITION/);
      const human = await runCli(['tx', 'show', xid, '--coordinator', ready.address]);
      assert.match(
        human.stdout,
        /events: +1 staged, not delivered yet \(\d+ attempts failed(, next in \S+)?; last error: topic \S+: topic-unavailable, 1 of 1/,
      );
      await admin.createTopics({ topics: [{ topic }], waitForLeaders: true });
      await waitFor(
        'the event in Kafka once the topic exists',
        async () => (await recordsIn(admin, topic)) === 1,
        60_000,
      );
    } finally {
      await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
      await admin.disconnect();
      c.close();
    }
    child!.kill('SIGTERM');
    assert.equal((await done).code, 0);
  });

  it('exits with code 3 when it loses its ownership lease, so a supervisor restarts it', async () => {
    const id = `cli-ha-${Math.random().toString(36).slice(2, 6)}`;
    const { done } = await start(['--id', id, '--prefix', prefix]);
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    try {
      const lock = await etcd.kv.range({ key: Buffer.from(`${prefix}/ha/owners/${id}`) });
      assert.equal(lock.kvs.length, 1, 'it holds its ownership lock');
      await etcd.leaseClient.leaseRevoke({ ID: lock.kvs[0].lease });
    } finally {
      etcd.close();
    }
    const exit = await done;
    assert.equal(exit.code, 3, exit.stderr);
    assert.match(exit.stderr, new RegExp(`dmtp coordinator: ${id} lost its ownership lease .*restart it`));
    assert.doesNotMatch(exit.stderr, /step-down \(/, 'the reason once, not wrapped again');
  });
});
