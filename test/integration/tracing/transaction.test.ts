/**
 * OpenTelemetry spans of a distributed transaction, read from the SDK's in-memory exporter: a real coordinator on
 * its etcd log relaying to the real Kafka, with `tracing`; two participants (file branch stores) served with rpc's
 * tracing middleware before the transaction middleware; an initiator with `tracing: true`. One trace holds the
 * transaction block, its business calls and their server spans (named with the xid and the branch), its commit,
 * the coordinator's Commit and its Prepare and Commit to each participant, and the handling of the event it
 * staged. A block that throws ends its span as an error, its rollback's span saying aborted. A coordinator in its
 * own process (DMTP_TRACING, an SDK preloaded that writes spans to a file) joins the initiator's trace the same way.
 */
import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Etcd3 } from 'etcd3';
import { context, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { InvalidArgumentError, mintXid } from '../../../common';
import { Coordinator } from '../../../coordinator';
import { EtcdRegistry } from '../../../registry';
import { Metadata } from '@grpc/grpc-js';
import { CoordinatorService } from '../../../proto';
import { clientSpan, tracingClientMiddleware, tracingServerMiddleware, UnaryTransport } from '../../../rpc';
import { createDmtp, FileBranchStore, Participant, type Dmtp, type ParticipantOptions } from '../../../txapi';
import { waitFor } from '../../support/coordinator-wait';
import { spawnCoordinator } from '../../support/coordinator-process';
import { ETCD_ENDPOINTS, KAFKA_BROKERS, nameFor } from '../../support/env';
import { EventsKit } from '../../support/events-kit';
import { startNoopParticipant, type NoopParticipant } from '../../support/noop-participant';
import { installTracing, isChildOf, oneSpan, type TestTracing } from '../../support/tracing';

describe('tracing a transaction (OpenTelemetry SDK in memory, real coordinator, etcd, Kafka)', function () {
  this.timeout(60_000);
  let tracing: TestTracing;
  let kit: EventsKit;
  let dir: string;
  let prefix: string;
  let etcd: Etcd3;
  let registry: EtcdRegistry;
  let coord: Coordinator;
  let dmtp: Dmtp;
  const participants: NoopParticipant[] = [];
  const closers: { close(): void }[] = [];

  beforeEach(async function () {
    tracing = installTracing();
    kit = new EventsKit(this);
    dir = await fs.mkdtemp(path.join(os.tmpdir(), `${nameFor(this, 30)}-`));
    prefix = `/dmtp-test/${nameFor(this)}`;
    etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    registry = new EtcdRegistry({ hosts: ETCD_ENDPOINTS, prefix, leaseTtlSeconds: 2 });
    coord = new Coordinator({
      id: 'trace-coord',
      etcd: { endpoints: ETCD_ENDPOINTS, prefix },
      kafka: { brokers: KAFKA_BROKERS },
      tracing: true,
    });
    await coord.start();
    dmtp = createDmtp({ coordinator: { id: 'trace-coord', address: coord.address }, tracing: true });
    closers.push(dmtp);
  });
  afterEach(async () => {
    for (const c of closers.splice(0)) c.close();
    for (const n of participants.splice(0)) await n.stop();
    await coord.stop();
    await kit.close();
    await registry.close();
    await etcd.delete().prefix(prefix);
    etcd.close();
    await fs.rm(dir, { recursive: true, force: true });
    await tracing.uninstall();
  });

  /** A participant whose one method does nothing, on a resource that votes PREPARED; traced, then enlisted. */
  const participant = async (service: string, options?: Partial<ParticipantOptions>) => {
    const n = await startNoopParticipant({
      service,
      registry,
      dir,
      serverMiddleware: [tracingServerMiddleware()],
      clientMiddleware: [tracingClientMiddleware()],
      participant: options,
    });
    participants.push(n);
    return n;
  };

  it('holds the block, its calls, their branches, its commit and its event’s handling in one trace', async () => {
    const [a, b] = [await participant('trace-a'), await participant('trace-b')];
    const topic = await kit.topic();
    const handled: string[] = [];
    const sub = await kit.subscribe({
      topics: [topic],
      group: kit.group(),
      tracing: true,
      handler: (e) => void handled.push(e.id),
    });
    await sub.joined();
    const root = trace.getTracer('test').startSpan('test-root');
    const xid = await context.with(trace.setSpan(context.active(), root), () =>
      dmtp.transaction(async (tx) => {
        await a.c.noop(Buffer.from('a'));
        await b.c.noop(Buffer.from('b'));
        tx.publish(topic, { key: 'k', value: { placed: true } });
        return tx.xid;
      }),
    );
    root.end();
    for (const { p } of [a, b]) {
      const key = { xid, branchId: p.branchIdFor('noop') };
      await waitFor(
        `${p.config.service} committed`,
        async () => (await p.store.get(key))?.status === 'committed',
      );
    }
    await waitFor('the event handled', async () => handled.length === 1);
    const spans = tracing.spans();

    const txSpan = oneSpan(spans, { name: 'dmtp.transaction', kind: SpanKind.INTERNAL });
    assert.ok(isChildOf(txSpan, root));
    assert.equal(txSpan.attributes['dmtp.xid'], xid);
    assert.equal(txSpan.attributes['dmtp.outcome'], 'committed');
    assert.equal(txSpan.status.code, SpanStatusCode.UNSET);

    for (const { p, service } of [a, b]) {
      const call = oneSpan(spans, {
        name: 'bench.Noop/Noop',
        kind: SpanKind.CLIENT,
        attributes: { 'dmtp.service': service },
      });
      assert.ok(isChildOf(call, txSpan), `the call to ${service} is a child of the transaction's span`);
      const served = spans.find((s) => s.kind === SpanKind.SERVER && isChildOf(s, call));
      assert.ok(served, `${service}'s server span is the child of the call`);
      assert.equal(served.attributes['dmtp.xid'], xid);
      assert.equal(served.attributes['dmtp.branch'], p.branchIdFor('noop'));
    }

    const commit = oneSpan(spans, { name: 'dmtp.commit', kind: SpanKind.INTERNAL });
    assert.ok(isChildOf(commit, txSpan));
    assert.equal(commit.attributes['dmtp.xid'], xid);
    assert.equal(commit.attributes['dmtp.outcome'], 'committed');
    assert.equal(commit.attributes['dmtp.branches'], 2);
    assert.equal(commit.attributes['dmtp.events'], 1);

    // The Commit call, served by the coordinator in the same trace, and its calls to each participant: both phases.
    const commitCall = oneSpan(spans, { name: 'dmtp.v1.Coordinator/Commit', kind: SpanKind.CLIENT });
    assert.ok(isChildOf(commitCall, commit));
    assert.equal(commitCall.attributes['dmtp.xid'], xid);
    assert.equal(commitCall.attributes['dmtp.peer'], coord.address);
    const commitServed = oneSpan(spans, { name: 'dmtp.v1.Coordinator/Commit', kind: SpanKind.SERVER });
    assert.ok(isChildOf(commitServed, commitCall), 'the coordinator serves Commit in the initiator’s trace');
    assert.equal(commitServed.attributes['dmtp.xid'], xid);
    assert.equal(commitServed.attributes['dmtp.outcome'], 'committed');
    for (const method of ['Prepare', 'Commit']) {
      for (const { p, service } of [a, b]) {
        const branch = p.branchIdFor('noop');
        const sent = oneSpan(spans, {
          name: `dmtp.v1.Participant/${method}`,
          kind: SpanKind.CLIENT,
          attributes: { 'dmtp.branch': branch },
        });
        assert.ok(
          isChildOf(sent, commitServed),
          `${method} to ${service} is a child of the coordinator’s Commit`,
        );
        assert.equal(sent.attributes['dmtp.xid'], xid);
        assert.equal(sent.attributes['dmtp.service'], service);
        assert.equal(sent.attributes['dmtp.instance'], `${service}-1`);
        const served = spans.find((s) => s.kind === SpanKind.SERVER && isChildOf(s, sent));
        assert.ok(served, `${service} serves ${method} in the same trace`);
        assert.equal(served.name, `dmtp.v1.Participant/${method}`);
        assert.equal(served.attributes['dmtp.xid'], xid);
        assert.equal(served.attributes['dmtp.branch'], branch);
        if (method === 'Prepare') assert.equal(served.attributes['dmtp.vote'], 'prepared');
        else assert.equal(served.attributes['dmtp.outcome'], 'committed');
      }
    }

    // The staged event carried the context active at tx.publish (the block's) through the coordinator's relay.
    const processSpan = oneSpan(spans, { name: `process ${topic}`, kind: SpanKind.CONSUMER });
    assert.ok(isChildOf(processSpan, txSpan), 'the event is handled in the transaction’s trace');
    assert.equal(processSpan.attributes['dmtp.xid'], xid);
    assert.equal(processSpan.attributes['dmtp.event_id'], `${xid}:0`);
  });

  it('ends a block that threw as an error; its rollback says aborted', async () => {
    const a = await participant('trace-a');
    let xid = '';
    await assert.rejects(
      dmtp.transaction(async (tx) => {
        xid = tx.xid;
        await a.c.noop(Buffer.from('a'));
        throw new Error('out of stock');
      }),
      /out of stock/,
    );
    const spans = tracing.spans();
    const txSpan = oneSpan(spans, { name: 'dmtp.transaction' });
    assert.equal(txSpan.attributes['dmtp.xid'], xid);
    assert.equal(txSpan.attributes['dmtp.outcome'], 'aborted');
    assert.equal(txSpan.status.code, SpanStatusCode.ERROR);
    assert.equal(txSpan.status.message, 'out of stock');
    const rollback = oneSpan(spans, { name: 'dmtp.rollback' });
    assert.ok(isChildOf(rollback, txSpan));
    assert.equal(rollback.attributes['dmtp.outcome'], 'aborted');
    assert.equal(rollback.attributes['dmtp.branches'], 1);
    assert.equal(rollback.status.code, SpanStatusCode.UNSET, 'a rollback asked for is no error');
    assert.equal(spans.filter((s) => s.name === 'dmtp.commit').length, 0);
    // The Rollback call, served by the coordinator, which tells the participant: one trace.
    const call = oneSpan(spans, { name: 'dmtp.v1.Coordinator/Rollback', kind: SpanKind.CLIENT });
    assert.ok(isChildOf(call, rollback));
    const served = oneSpan(spans, { name: 'dmtp.v1.Coordinator/Rollback', kind: SpanKind.SERVER });
    assert.ok(isChildOf(served, call));
    assert.equal(served.attributes['dmtp.outcome'], 'aborted');
    await waitFor('the participant told', async () =>
      tracing.spans().some((s) => s.name === 'dmtp.v1.Participant/Rollback' && s.kind === SpanKind.SERVER),
    );
    const told = oneSpan(tracing.spans(), { name: 'dmtp.v1.Participant/Rollback', kind: SpanKind.CLIENT });
    assert.ok(isChildOf(told, served));
    assert.equal(told.attributes['dmtp.xid'], xid);
  });

  it('serves its plain unary methods in a span too; a Coordinator refuses a tracing option not a boolean', async () => {
    const unary = new UnaryTransport(coord.address);
    closers.push(unary);
    const get = CoordinatorService.get;
    const root = trace.getTracer('test').startSpan('test-root');
    const metadata = new Metadata();
    await assert.rejects(
      context.with(trace.setSpan(context.active(), root), () =>
        clientSpan(get.path, metadata, {}, () =>
          unary.invoke({
            method: get.path,
            request: get.requestSerialize({ xid: 'trace-coord:1:1' }),
            metadata,
            deadline: Date.now() + 3_000,
          }),
        ),
      ),
      (err: Error & { code?: number }) => err.code === 5, // NOT_FOUND: an operator's get of an unknown xid
    );
    root.end();
    const spans = tracing.spans();
    const sent = oneSpan(spans, { name: 'dmtp.v1.Coordinator/Get', kind: SpanKind.CLIENT });
    const served = oneSpan(spans, { name: 'dmtp.v1.Coordinator/Get', kind: SpanKind.SERVER });
    assert.ok(isChildOf(sent, root));
    assert.ok(isChildOf(served, sent), 'the unary Get is served in the caller’s trace');
    assert.equal(served.status.code, SpanStatusCode.ERROR);
    assert.equal(served.attributes['rpc.grpc.status_code'], 5);
    assert.match(served.status.message ?? '', /trace-coord:1:1/);
    assert.throws(
      () =>
        new Coordinator({
          etcd: { endpoints: ETCD_ENDPOINTS, prefix },
          tracing: 'yes' as unknown as boolean,
        }),
      (err: Error) =>
        err instanceof InvalidArgumentError && /tracing must be true or false/.test(err.message),
    );
  });

  it('a coordinator process with DMTP_TRACING and a preloaded SDK serves Commit in the initiator’s trace', async () => {
    const [a, b] = [await participant('trace-a'), await participant('trace-b')];
    const spansFile = path.join(dir, 'coordinator-spans.jsonl');
    const child = await spawnCoordinator({
      id: 'trace-proc',
      prefix,
      env: {
        DMTP_TRACING: '1',
        NODE_OPTIONS: `--require ${JSON.stringify(path.join(__dirname, '..', '..', '..', 'examples', 'otel-file.cjs'))}`,
        DMTP_SPANS_FILE: spansFile,
      },
    });
    try {
      const viaChild = createDmtp({ coordinator: { id: child.id, address: child.address }, tracing: true });
      closers.push(viaChild);
      const xid = await viaChild.transaction(async (tx) => {
        await a.c.noop(Buffer.from('a'));
        await b.c.noop(Buffer.from('b'));
        return tx.xid;
      });
      const commitCall = oneSpan(tracing.spans(), {
        name: 'dmtp.v1.Coordinator/Commit',
        kind: SpanKind.CLIENT,
      });
      type Line = { name: string; kind: number; traceId: string; spanId: string; parentSpanId?: string };
      const read = async (): Promise<Line[]> =>
        (await fs.readFile(spansFile, 'utf8').catch(() => ''))
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as Line);
      // Phase 2 goes on after Commit answered: wait for both participants' Commit spans in the child's file.
      await waitFor(
        'the coordinator’s spans',
        async () => (await read()).filter((l) => l.name === 'dmtp.v1.Participant/Commit').length === 2,
      );
      const lines = await read();
      const served = lines.find((l) => l.name === 'dmtp.v1.Coordinator/Commit' && l.kind === SpanKind.SERVER);
      assert.ok(served, `a Commit server span among ${lines.map((l) => l.name).join(', ')}`);
      assert.equal(served.traceId, commitCall.spanContext().traceId, 'in the initiator’s trace');
      assert.equal(
        served.parentSpanId,
        commitCall.spanContext().spanId,
        'child of the initiator’s Commit call',
      );
      for (const method of ['Prepare', 'Commit']) {
        const sent = lines.filter(
          (l) => l.name === `dmtp.v1.Participant/${method}` && l.kind === SpanKind.CLIENT,
        );
        assert.equal(sent.length, 2, `${method} sent to both participants`);
        for (const l of sent) assert.equal(l.parentSpanId, served.spanId);
        // …and served by each participant (this process) in the same trace.
        for (const l of sent) {
          const at = tracing
            .spans()
            .filter((s) => s.kind === SpanKind.SERVER && s.parentSpanContext?.spanId === l.spanId);
          assert.equal(at.length, 1, `${method} served in the trace`);
          assert.equal(at[0].attributes['dmtp.xid'], xid);
        }
      }
    } finally {
      await child.stop();
    }
  });

  it('a participant with tracing asks about a branch in doubt in a span the coordinator serves in its trace', async () => {
    // A branch left prepared by a transaction the coordinator never heard of (its initiator died before Commit).
    const xid = mintXid('trace-coord');
    const store = new FileBranchStore({ path: path.join(dir, 'trace-doubt.jsonl') });
    await store.open();
    const key = { xid, branchId: 'noop@trace-doubt-1' };
    await store.transition(key, 'registered', {
      resource: 'noop',
      coordinatorAddress: coord.address,
      deadlineAtMs: Date.now() + 30_000,
    });
    await store.transition(key, 'prepared');
    await store.close();
    const n = await participant('trace-doubt', { tracing: true, recoveryIntervalMs: 100, inDoubtAfterMs: 0 });
    // Presumed abort: the coordinator answers ABORT, the participant rolls its branch back.
    await waitFor('the branch rolled back', async () => (await n.p.store.get(key))?.status === 'rolled_back');
    const spans = tracing.spans();
    const asked = spans.find(
      (s) => s.name === 'dmtp.v1.Coordinator/QueryOutcome' && s.kind === SpanKind.CLIENT,
    );
    assert.ok(asked, 'the outcome query is a span');
    assert.equal(asked.attributes['dmtp.xid'], xid);
    const served = spans.find((s) => s.kind === SpanKind.SERVER && isChildOf(s, asked));
    assert.ok(served, 'the coordinator serves it in the participant’s trace');
    assert.equal(served.name, 'dmtp.v1.Coordinator/QueryOutcome');
    assert.equal(served.attributes['dmtp.xid'], xid);
    assert.throws(
      () => new Participant({ ...n.p.config, store, tracing: 'on' as unknown as boolean }),
      (err: Error) =>
        err instanceof InvalidArgumentError && /participant: tracing must be true or false/.test(err.message),
    );
  });

  it('refuses a tracing option that is not a boolean', () => {
    assert.throws(
      () =>
        createDmtp({
          coordinator: { id: 'trace-coord', address: coord.address },
          tracing: 'on' as unknown as boolean,
        }),
      (err: Error) => err instanceof InvalidArgumentError && /tracing/.test(err.message),
    );
  });
});
