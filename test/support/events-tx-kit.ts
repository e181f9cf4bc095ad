/**
 * What the transactional-events tests share: the real coordinator (coordinator/main.ts as a child process, etcd
 * log, Kafka event sink) restartable on the same id/port/prefix, two in-process TestParticipants (one votes
 * ABORT on branch ids starting with `no-`), the txapi SDK as the initiator (`tx.publish`), and a collector
 * subscribed with txapi's `subscribe` (dedupe on by default).
 *
 * The business calls are not the point here, so a transaction enlists its branches the way a business call's
 * `dmtp-branch` trailer would (`addBranch` on the current context) instead of making the call.
 */
import { Etcd3 } from 'etcd3';
import {
  createDmtp,
  subscribe,
  TransactionAbortedError,
  TransactionOutcomeUnknownError,
  type Dmtp,
  type ReceivedEvent,
  type Subscription,
} from '../../txapi';
import { addBranch, currentTx } from '../../txapi/context';
import { spawnCoordinator, type CoordinatorChild } from './coordinator-process';
import { ETCD_ENDPOINTS, nameFor } from './env';
import { FAST_GROUP } from './events-kit';
import { TestParticipant } from './test-participant';
import { freePort } from './txapi-bank';

export type Fate = 'commit' | 'vote-abort' | 'rollback';
export type Outcome = 'committed' | 'aborted' | 'unknown';

export interface TxEvent {
  topic: string;
  key: string;
  value: unknown;
  headers?: Record<string, string>;
}

/** The block threw on purpose: the initiator rolls back. */
class RollbackOnPurpose extends Error {}

export interface Received {
  id: string;
  xid: string | undefined;
  key: string;
  value: unknown;
  atMs: number;
}

export class EventsTxEnv {
  coord?: CoordinatorChild;
  dmtp!: Dmtp;
  readonly name: string;
  readonly prefix: string;
  readonly coordId: string;
  /** Coordinator exits not caused by the test's own stop. */
  crashes = 0;
  private port = 0;
  private stopping = false;
  private parts: TestParticipant[] = [];
  private subs: Subscription[] = [];
  private n = 0;

  constructor(
    ctx: Mocha.Context,
    readonly brokers: string[],
  ) {
    this.name = nameFor(ctx, 30);
    this.prefix = `/t/${this.name}`;
    this.coordId = this.name.replace(/[^A-Za-z0-9._-]/g, '-');
  }

  /**
   * Starts the participants, the coordinator (with `failpoint` on its first run only; every crash restarts it
   * without one, on the same port, id and etcd prefix) and the SDK.
   */
  async start(o: { failpoint?: string; env?: Record<string, string> } = {}): Promise<this> {
    this.parts = [
      await new TestParticipant({ name: `${this.coordId}-a` }).start(),
      await new TestParticipant({ name: `${this.coordId}-b`, switches: { voteAbort: ['no-'] } }).start(),
    ];
    this.port = await freePort();
    const launch = async (failpoint?: string) => {
      const c = await spawnCoordinator({
        id: this.coordId,
        prefix: this.prefix,
        failpoint,
        env: {
          DMTP_COORDINATOR_PORT: String(this.port),
          DMTP_EVENT_SINK: 'kafka',
          KAFKA_BROKERS: this.brokers.join(','),
          ...o.env,
        },
      });
      this.coord = c;
      void c.exited.then(() => {
        if (this.stopping || this.coord !== c) return;
        this.crashes++;
        launch().catch((err) => process.stderr.write(`coordinator restart failed: ${String(err)}\n`));
      });
    };
    await launch(o.failpoint);
    this.dmtp = createDmtp({
      coordinator: { id: this.coordId, address: `127.0.0.1:${this.port}` },
      commitTimeoutMs: 8_000,
    });
    return this;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** One transaction through the SDK: two branches, `events` staged with tx.publish, ended as `fate` says. */
  async run(fate: Fate, events: TxEvent[]): Promise<{ xid: string; outcome: Outcome }> {
    const n = this.n++;
    let xid = '';
    try {
      await this.dmtp.transaction(
        async (tx) => {
          xid = tx.xid;
          const ctx = currentTx()!;
          // Branch ids are unique within a transaction (the coordinator refuses one id with two references).
          addBranch(ctx, this.parts[0].branch(`ok-${n}-a`));
          addBranch(ctx, this.parts[1].branch(fate === 'vote-abort' ? `no-${n}-b` : `ok-${n}-b`));
          for (const e of events) tx.publish(e.topic, { key: e.key, value: e.value, headers: e.headers });
          if (fate === 'rollback') throw new RollbackOnPurpose('rolled back on purpose');
        },
        { timeoutMs: 10_000 },
      );
      return { xid, outcome: 'committed' };
    } catch (err) {
      if (!xid) throw err;
      if (err instanceof TransactionAbortedError || err instanceof RollbackOnPurpose)
        return { xid, outcome: 'aborted' };
      if (err instanceof TransactionOutcomeUnknownError) return { xid, outcome: 'unknown' };
      // The coordinator unreachable at Commit surfaces as unknown too; anything else is a test failure.
      throw err;
    }
  }

  /** The final outcome of an xid, asked until the coordinator answers with a decision. */
  async outcomeOf(xid: string, timeoutMs = 20_000): Promise<'committed' | 'aborted'> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      try {
        const o = await this.dmtp.outcomeOf(xid);
        if (o.status === 'committed' || o.status === 'aborted') return o.status;
      } catch {
        // coordinator restarting
      }
      if (Date.now() > until) throw new Error(`no outcome for ${xid} within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** Subscribes (txapi subscribe: dedupe on) from the beginning of `topic` and collects what the handler sees. */
  async collect(topic: string, brokers = this.brokers): Promise<Received[]> {
    const got: Received[] = [];
    const sub = await subscribe({
      brokers,
      ...FAST_GROUP,
      topics: [topic],
      group: `${this.name}-g${this.subs.length}`,
      fromBeginning: true,
      concurrency: 3,
      createDeadLetterTopics: false,
      handler: (e: ReceivedEvent) =>
        void got.push({
          id: e.id,
          xid: e.xid,
          key: e.key?.toString() ?? '',
          value: e.value,
          atMs: Date.now(),
        }),
    });
    this.subs.push(sub);
    await sub.joined();
    return got;
  }

  async close(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.subs.splice(0).map((s) => s.stop()));
    this.dmtp?.close();
    await this.coord?.stop();
    await Promise.all(this.parts.map((p) => p.stop()));
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
    await etcd.delete().prefix(this.prefix);
    etcd.close();
  }
}

/** Polls `check` until it holds or `timeoutMs` passes (then throws with `what()`). */
export async function until(what: () => string, check: () => boolean | Promise<boolean>, timeoutMs: number) {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms: ${what()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
