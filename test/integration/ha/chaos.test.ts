// Chaos: a 3-member etcd cluster of the test's own, 3 HA coordinators, two PostgreSQL banks with 2 participant
// instances each (registered in the registry, called by name through rpc's client), transactional events to the
// shared Kafka. Steady transfers (each publishes one event) while, one at a time, a coordinator, a participant
// instance or an etcd member is killed with `kill -9` and restarted. Then a checker verifies every invariant of
// DESIGN.md and prints the counts. Short mode by default (DMTP_CHAOS_SECONDS=60); DMTP_CHAOS_SECONDS=600 for a
// long run.
import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { Pool } from 'pg';
import { deleteTopics, ensureTopics, subscribe, type Subscription } from '../../../events';
import { EtcdRegistry } from '../../../registry';
import { client, type ServiceClient } from '../../../rpc';
import { createDmtp, TransactionAbortedError, txClientMiddleware, type Dmtp } from '../../../txapi';
import { KAFKA_BROKERS, nameFor } from '../../support/env';
import {
  EtcdCluster,
  ledgerXids,
  openBranches,
  preparedCount,
  spawnHaBank,
  sumOf,
  Supervised,
  supervisedCoordinator,
  type BankChild,
} from '../../support/ha-cluster';
import { logRecords, type HaChild } from '../../support/ha-coordinator';
import { freePort } from '../../support/txapi-bank';
import { BANK_DEFINITION, BANK_SCHEMA } from '../../support/txapi-bank-main';
import { createTestDb, type TestDb } from '../../support/txapi-pg';

const SECONDS = Number(process.env.DMTP_CHAOS_SECONDS || 60);
const LEASE_TTL_S = 3;
const ACCOUNTS = 10;
const START = 1_000_000;
const WORKERS = 8;
const PREFIX = '/chaos';

type Kind = 'coordinator' | 'participant' | 'etcd';
type Fate = 'committed' | 'aborted' | 'unknown';

describe('HA chaos: kill -9 of coordinators, participant instances and etcd members under load', function () {
  this.timeout((SECONDS + 150) * 1_000);
  const cluster = new EtcdCluster();
  let registry: EtcdRegistry | undefined;
  let etcd: Etcd3 | undefined;
  let dmtp: Dmtp | undefined;
  let subscription: Subscription | undefined;
  let topic = '';
  const dbs: TestDb[] = [];
  const pools: Pool[] = [];
  const coordinators: Supervised<HaChild>[] = [];
  const banks: Supervised<BankChild>[] = [];
  const bankClients: ServiceClient<typeof BANK_DEFINITION>[] = [];

  after(async () => {
    for (const c of bankClients) await c.close();
    dmtp?.close();
    await subscription?.stop().catch(() => undefined);
    for (const b of banks) await b.stop(false);
    for (const c of coordinators) await c.stop(false);
    await registry?.close().catch(() => undefined);
    etcd?.close();
    await cluster.down();
    if (topic) await deleteTopics({ brokers: KAFKA_BROKERS }, [topic, `${topic}.dlq`]).catch(() => undefined);
    for (const p of pools) await p.end();
    for (const d of dbs) await d.drop();
  });

  it(`keeps every invariant through ${SECONDS} s of transfers with random kills`, async function () {
    const log = (m: string) =>
      process.stdout.write(`      [chaos ${new Date().toISOString().slice(11, 19)}] ${m}\n`);
    await cluster.up();
    const endpoints = cluster.endpoints;
    etcd = new Etcd3({ hosts: endpoints });
    topic = `${nameFor(this, 30)}-transfers`;
    await ensureTopics({ brokers: KAFKA_BROKERS }, [topic], { partitions: 2 });

    // Banks: a database each, 2 participant instances each, restarted after a kill on a new port and on their
    // first port in turn: phase 2 of branches prepared before a kill must follow them (the coordinators look
    // the instance up in the registry) or the coordinators' logs would never drain.
    for (const name of ['a', 'b']) {
      const db = await createTestDb(this, `_${name}`);
      dbs.push(db);
      const pool = new Pool({ connectionString: db.url, max: 2 });
      pools.push(pool);
      await pool.query(BANK_SCHEMA);
      for (let i = 0; i < ACCOUNTS; i++)
        await pool.query('INSERT INTO accounts VALUES ($1, $2)', [`${name}${i}`, START]);
    }
    const coordEnv = {
      DMTP_EVENT_SINK: 'kafka',
      KAFKA_BROKERS: KAFKA_BROKERS.join(','),
      DMTP_PHASE2_CALL_TIMEOUT_MS: '2000',
      DMTP_PREPARE_TIMEOUT_MS: '3000',
    };
    for (const id of ['chaos-c1', 'chaos-c2', 'chaos-c3']) {
      const s = supervisedCoordinator({
        id,
        prefix: PREFIX,
        endpoints,
        leaseTtlSeconds: LEASE_TTL_S,
        port: await freePort(),
        env: coordEnv,
      });
      await s.start();
      coordinators.push(s);
    }
    for (const [i, name] of ['a', 'b'].entries()) {
      for (const n of [1, 2]) {
        const spec = {
          url: dbs[i].url,
          service: `bank-${name}`,
          instanceId: `bank-${name}-${n}`,
          port: await freePort(),
          endpoints,
          prefix: PREFIX,
          leaseTtlSeconds: LEASE_TTL_S,
        };
        let launches = 0;
        const s = new Supervised(spec.instanceId, async () =>
          spawnHaBank(launches++ % 2 === 0 ? spec : { ...spec, port: await freePort() }),
        );
        await s.start();
        banks.push(s);
      }
    }
    registry = new EtcdRegistry({ hosts: endpoints, prefix: PREFIX, leaseTtlSeconds: LEASE_TTL_S });
    dmtp = createDmtp({ registry, commitTimeoutMs: 8_000, initiator: 'chaos' });
    const [bankA, bankB] = ['bank-a', 'bank-b'].map((s) =>
      client(registry!, s, BANK_DEFINITION, { middleware: [txClientMiddleware], timeoutMs: 3_000 }),
    );
    bankClients.push(bankA, bankB);
    const events = new Map<string, string>(); // event id -> xid
    subscription = await subscribe({
      brokers: KAFKA_BROKERS,
      topics: [topic],
      group: `${topic}-checker`,
      fromBeginning: true,
      dedupe: false,
      sessionTimeoutMs: 6_000,
      heartbeatIntervalMs: 500,
      rebalanceTimeoutMs: 6_000,
      maxWaitTimeMs: 100,
      handler: async (e) => void events.set(e.id, e.xid ?? ''),
    });

    // Load: steady transfers a<i> -> b<j>, each publishing one event.
    const fates = new Map<string, Fate>();
    const errors = new Map<string, number>();
    let running = true;
    let n = 0;
    const worker = async () => {
      while (running) {
        const k = n++;
        const amount = 1 + (k % 17);
        let xid = '';
        try {
          await dmtp!.transaction(
            async (tx) => {
              xid = tx.xid;
              await bankA.debit({ account: `a${k % ACCOUNTS}`, amount });
              await bankB.credit({ account: `b${(k * 7) % ACCOUNTS}`, amount });
              tx.publish(topic, { key: tx.xid, value: { xid: tx.xid, amount } });
            },
            { timeoutMs: 5_000 },
          );
          fates.set(xid, 'committed');
        } catch (err) {
          const why = `${(err as Error).name}: ${(err as Error).message.replace(/[\w.-]+:[0-9a-z]+:[0-9a-z]+/g, 'X')}`;
          errors.set(why.slice(0, 120), (errors.get(why.slice(0, 120)) ?? 0) + 1);
          if (xid)
            fates.set(
              xid,
              err instanceof TransactionAbortedError || !(err as Error).name?.includes('Unknown')
                ? 'aborted'
                : 'unknown',
            );
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    };
    const load = Promise.all(Array.from({ length: WORKERS }, worker));

    // Chaos: one fault at a time; the first three cover every kind.
    const kills: Record<Kind, number> = { coordinator: 0, participant: 0, etcd: 0 };
    const order: Kind[] = ['coordinator', 'participant', 'etcd'];
    const rnd = (xs: number) => Math.floor(Math.random() * xs);
    const endAt = Date.now() + SECONDS * 1_000;
    await new Promise((r) => setTimeout(r, 3_000));
    for (let f = 0; Date.now() < endAt - 8_000; f++) {
      const kind = f < order.length ? order[f] : order[rnd(order.length)];
      if (kind === 'coordinator') {
        const c = coordinators[rnd(coordinators.length)];
        log(`kill -9 ${c.name}`);
        // Restarted only after its lease ended: a survivor takes over first, then hands back.
        await c.kill9((LEASE_TTL_S + 1) * 1_000);
      } else if (kind === 'participant') {
        const b = banks[rnd(banks.length)];
        log(`kill -9 ${b.name}`);
        await b.kill9(1_000);
      } else {
        const i = rnd(cluster.members);
        log(`kill -9 etcd member ${i}`);
        cluster.kill(i);
        await new Promise((r) => setTimeout(r, 2_000));
        await cluster.up();
      }
      kills[kind]++;
      log(`${kind} back; transfers so far ${fates.size}`);
      await new Promise((r) => setTimeout(r, 2_000 + rnd(3_000)));
    }
    await new Promise((r) => setTimeout(r, Math.max(0, endAt - Date.now())));
    running = false;
    await load;
    for (const s of [...coordinators, ...banks]) await s.settled();

    // Unknown outcomes: ask whoever answers for the owner now (a restarted or handed-back owner answers a
    // finished commit from its committed marker, so "aborted" for an applied transfer is a violation).
    const askedLater = new Map<string, Fate>();
    for (const [xid, fate] of fates) {
      if (fate !== 'unknown') continue;
      try {
        const o = await dmtp.outcomeOf(xid);
        if (o.status === 'committed' || o.status === 'aborted') askedLater.set(xid, o.status);
      } catch {
        // stays unknown: the checker decides from the databases
      }
    }

    // Checker. Liveness first: within the recovery window nothing is prepared, open or unfinished.
    const [poolA, poolB] = pools;
    const recoveryMs = 45_000;
    const settleBy = Date.now() + recoveryMs;
    let left: Record<string, number> = {};
    for (;;) {
      left = {
        preparedA: await preparedCount(poolA),
        preparedB: await preparedCount(poolB),
        openA: await openBranches(poolA),
        openB: await openBranches(poolB),
        logRecords: (await logRecords(etcd, PREFIX)).length,
      };
      if (Object.values(left).every((v) => v === 0) || Date.now() > settleBy) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    const inA = await ledgerXids(poolA);
    const inB = await ledgerXids(poolB);
    const committedInDb = new Set([...inA].filter((x) => inB.has(x)));
    const eventsBy = Date.now() + 20_000;
    const eventXids = () => new Set(events.values());
    // One set per look (not one per transfer: a 600 s run's 25,000 transfers made that a quadratic wait).
    for (let got = eventXids(); [...committedInDb].some((x) => !got.has(x)) && Date.now() < eventsBy;) {
      await new Promise((r) => setTimeout(r, 250));
      got = eventXids();
    }
    await new Promise((r) => setTimeout(r, 1_000)); // late duplicates or strays
    const delivered = eventXids();

    const violations: string[] = [];
    const check = (ok: boolean, what: string) => ok || violations.push(what);
    const sum = (await sumOf(poolA)) + (await sumOf(poolB));
    check(sum === 2 * ACCOUNTS * START, `total balance ${sum} != ${2 * ACCOUNTS * START}`);
    const onlyA = [...inA].filter((x) => !inB.has(x));
    const onlyB = [...inB].filter((x) => !inA.has(x));
    check(onlyA.length === 0, `transfers only in bank A: ${onlyA.slice(0, 5).join(' ')}`);
    check(onlyB.length === 0, `transfers only in bank B: ${onlyB.slice(0, 5).join(' ')}`);
    for (const [xid, fate] of fates) {
      if (fate === 'committed') check(committedInDb.has(xid), `acknowledged commit ${xid} is not applied`);
      if (fate === 'aborted') check(!inA.has(xid) && !inB.has(xid), `aborted ${xid} is applied`);
    }
    for (const [xid, fate] of askedLater) {
      if (fate === 'committed')
        check(committedInDb.has(xid), `outcomeOf says committed but ${xid} is not applied`);
      else check(!inA.has(xid) && !inB.has(xid), `outcomeOf says aborted but ${xid} is applied`);
    }
    const missing = [...committedInDb].filter((x) => !delivered.has(x));
    const stray = [...delivered].filter((x) => !committedInDb.has(x));
    check(missing.length === 0, `committed transfers without their event: ${missing.slice(0, 5).join(' ')}`);
    check(stray.length === 0, `events of transfers that did not commit: ${stray.slice(0, 5).join(' ')}`);
    check(
      Object.values(left).every((v) => v === 0),
      `unfinished after the ${recoveryMs / 1000} s recovery window: ${JSON.stringify(left)}`,
    );

    const counts = { committed: 0, aborted: 0, unknown: 0 };
    for (const f of fates.values()) counts[f]++;
    const unknownResolved = { committed: 0, aborted: 0 };
    for (const f of askedLater.values()) if (f !== 'unknown') unknownResolved[f]++;
    const summary = {
      seconds: SECONDS,
      transactions: fates.size,
      ...counts,
      unknownResolvedByOutcomeOf: unknownResolved,
      appliedInDatabases: committedInDb.size,
      eventsDelivered: events.size,
      kills,
      restarts: Object.fromEntries([...coordinators, ...banks].map((s) => [s.name, s.restarts])),
      violations: violations.length,
    };
    log(`result ${JSON.stringify(summary)}`);
    if (violations.length) log(`errors seen by the initiator: ${JSON.stringify([...errors])}`);
    assert.deepEqual(violations, [], 'invariant violations');
    assert.ok(counts.committed > 0, 'transfers committed under chaos');
    assert.ok(
      kills.coordinator > 0 && kills.participant > 0 && kills.etcd > 0,
      'every kind of kill happened',
    );
  });
});
