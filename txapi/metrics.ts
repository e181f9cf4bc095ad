/**
 * Prometheus metrics of one participant instance, opt-in and gathered without touching the protocol code, as the
 * coordinator's are: `instrument(options)` wraps the branch store (branch outcomes, open branches, store latency
 * and failures) and every resource (prepare votes, each step's latency and failures) of a Participant's options.
 *
 * One prom-client Registry per instance (never the global one); no label is unbounded: outcomes, states, votes,
 * steps and store operations are fixed sets, resources are the ones the participant declares. Never an xid or a
 * branch id.
 *
 * The open-branch gauges count the branches of this instance (branch ids `<resource>@<instanceId>`) that its
 * store holds unfinished: seeded from the store at open(), then followed through every transition this process
 * makes and every record it reads back; a branch another instance finished (a shared PostgreSQL store lets any
 * instance finish another's in-doubt branch) is dropped when recovery's next list() no longer holds it. A shared
 * store lists every instance's branches; only this one's count.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { METRICS_DEFAULTS, serveMetrics, type MetricsServer, type ServeMetricsOptions } from '../rpc/metrics';
import {
  branchKeyString,
  FINAL,
  type BranchKey,
  type InstanceOwner,
  type BranchPatch,
  type BranchRecord,
  type BranchStatus,
  type BranchStore,
  type TransitionOptions,
  type TransitionResult,
} from './branch-store';
import { BranchNotFoundError, IllegalBranchTransitionError } from './errors';
import type { ParticipantOptions } from './participant-options';
import type { PrepareVote, Resource } from './resource';

export interface ParticipantMetricsOptions {
  /** Where the metrics go (default: a new Registry of their own; pass an RpcMetrics' to serve both together). */
  registry?: Registry;
  /** Buckets of the latency histograms, in seconds (default METRICS_DEFAULTS.latencyBucketsSeconds). */
  latencyBucketsSeconds?: number[];
}

/** What a branch store's transition counts as, by the state it moved to. */
const OUTCOME: Record<BranchStatus, string> = {
  registered: 'opened',
  prepared: 'prepared',
  committed: 'committed',
  rolled_back: 'rolled_back',
};
const OPEN_STATES = ['registered', 'prepared'] as const;
const STORE_OPS = ['get', 'transition', 'set_data', 'list', 'purge'] as const;
type StoreOp = (typeof STORE_OPS)[number];
const STEPS = [
  'begin',
  'mark_call',
  'undo_call',
  'prepare',
  'commit',
  'commit_one_phase',
  'rollback',
] as const;
type Step = (typeof STEPS)[number];

export class ParticipantMetrics {
  readonly registry: Registry;
  private readonly branches: Counter<'outcome'>;
  private readonly votes: Counter<'resource' | 'vote'>;
  private readonly resourceLatency: Histogram<'resource' | 'step'>;
  private readonly resourceFailures: Counter<'resource' | 'step'>;
  private readonly storeLatency: Histogram<'op'>;
  private readonly storeFailures: Counter<'op'>;
  /**
   * This instance's unfinished branches as its store holds them: key → state, since when (the record's time, ms),
   * and when this process last saw that state (its own clock, ms).
   */
  private readonly open = new Map<string, { status: BranchStatus; sinceMs: number; seenAtMs: number }>();
  private instrumented: string | undefined;

  constructor(options: ParticipantMetricsOptions = {}) {
    this.registry = options.registry ?? new Registry();
    const registers = [this.registry];
    const buckets = options.latencyBucketsSeconds ?? METRICS_DEFAULTS.latencyBucketsSeconds;
    this.branches = new Counter({
      name: 'dmtp_participant_branches_total',
      help: 'Branch transitions this instance recorded, by outcome: opened (enlisted), prepared, committed, rolled_back (null rollbacks included).',
      labelNames: ['outcome'],
      registers,
    });
    for (const outcome of Object.values(OUTCOME)) this.branches.inc({ outcome }, 0);
    this.votes = new Counter({
      name: 'dmtp_participant_prepare_votes_total',
      help: 'Votes the resources gave in prepare, by resource and vote (prepared, read_only, abort).',
      labelNames: ['resource', 'vote'],
      registers,
    });
    this.resourceLatency = new Histogram({
      name: 'dmtp_participant_resource_duration_seconds',
      help: 'Time each resource step took (begin, mark_call, undo_call, prepare, commit, commit_one_phase, rollback), failed ones included.',
      labelNames: ['resource', 'step'],
      buckets,
      registers,
    });
    this.resourceFailures = new Counter({
      name: 'dmtp_participant_resource_failures_total',
      help: 'Resource steps that threw, by resource and step (a failed prepare votes ABORT; a failed phase 2 is asked again).',
      labelNames: ['resource', 'step'],
      registers,
    });
    this.storeLatency = new Histogram({
      name: 'dmtp_participant_store_duration_seconds',
      help: 'Time the branch store took, by operation (get, transition, set_data, list, purge), failed ones included.',
      labelNames: ['op'],
      buckets,
      registers,
    });
    this.storeFailures = new Counter({
      name: 'dmtp_participant_store_failures_total',
      help: 'Branch store operations that failed with anything but a refused transition (a dead database, a full disk), by operation.',
      labelNames: ['op'],
      registers,
    });
    for (const op of STORE_OPS) this.storeFailures.inc({ op }, 0);
    const open = this.open;
    new Gauge({
      name: 'dmtp_participant_branches',
      help: 'Unfinished branches of this instance in its branch store, by state (registered, prepared).',
      labelNames: ['state'],
      registers,
      collect() {
        const n: Record<string, number> = { registered: 0, prepared: 0 };
        for (const b of open.values()) n[b.status]++;
        for (const state of OPEN_STATES) this.set({ state }, n[state]);
      },
    });
    new Gauge({
      name: 'dmtp_participant_prepared_oldest_seconds',
      help: 'How long the oldest prepared branch of this instance has waited for its outcome (0 when none).',
      registers,
      collect() {
        let oldest = Infinity;
        for (const b of open.values()) if (b.status === 'prepared') oldest = Math.min(oldest, b.sinceMs);
        this.set(oldest === Infinity ? 0 : Math.max(0, Date.now() - oldest) / 1000);
      },
    });
  }

  /**
   * The participant's options with its store and every resource instrumented:
   * `new Participant(metrics.instrument({ service, instanceId, address, store, resources }))`. Once per
   * ParticipantMetrics (one instance's branches per gauge).
   */
  instrument(options: ParticipantOptions): ParticipantOptions {
    if (this.instrumented !== undefined) {
      throw new Error(
        `ParticipantMetrics already instruments participant instance '${this.instrumented}': ` +
          `use one ParticipantMetrics (and one registry) per participant`,
      );
    }
    this.instrumented = options.instanceId;
    return {
      ...options,
      store: this.store(options.store, options.instanceId),
      resources: options.resources.map((r) => this.resource(r)),
    };
  }

  /**
   * The store, timed and counted. The open-branch gauges follow the branches whose ids end in `@<instanceId>`
   * (the participant's own: `<resource>@<instanceId>`); without an instance id, every branch it sees.
   */
  store(inner: BranchStore, instanceId?: string): BranchStore & { describe(): string } {
    const suffix = instanceId === undefined ? '' : `@${instanceId}`;
    const ours = (key: BranchKey) => key.branchId.endsWith(suffix);
    const follow = (key: BranchKey, rec: BranchRecord | undefined) => {
      if (!ours(key)) return;
      const k = branchKeyString(key);
      if (rec === undefined || FINAL.includes(rec.status)) {
        this.open.delete(k);
        return;
      }
      const was = this.open.get(k);
      if (was?.status !== rec.status)
        this.open.set(k, { status: rec.status, sinceMs: rec.updatedAtMs, seenAtMs: Date.now() });
    };
    const timed = <T>(op: StoreOp, run: () => Promise<T>, refused?: (err: unknown) => boolean) =>
      measure(this.storeLatency, this.storeFailures, { op }, run, refused);
    return {
      // What the participant's start-up log names as its store.
      describe: () => `${inner.constructor.name} (with ParticipantMetrics)`,
      open: async (owner?: InstanceOwner) => {
        await inner.open(owner);
        this.open.clear();
        for (const rec of await inner.list(OPEN_STATES)) follow(rec, rec);
      },
      close: () => inner.close(),
      get: async (key: BranchKey) => {
        const rec = await timed('get', () => inner.get(key));
        follow(key, rec);
        return rec;
      },
      transition: async (
        key: BranchKey,
        to: BranchStatus,
        patch?: BranchPatch,
        options?: TransitionOptions,
      ): Promise<TransitionResult> => {
        const r = await timed('transition', () => inner.transition(key, to, patch, options), isRefusal);
        if (r.changed) this.branches.inc({ outcome: OUTCOME[to] });
        follow(key, r.record);
        return r;
      },
      setData: (key: BranchKey, data: Record<string, string>) =>
        timed('set_data', () => inner.setData(key, data), isRefusal),
      list: async (statuses: readonly BranchStatus[]) => {
        const startedAtMs = Date.now();
        const recs = await timed('list', () => inner.list(statuses));
        // A branch of ours in a listed state that the list does not hold left that state (another instance
        // finished it, e.g. while this one was down): forget it — unless this process saw it change after the
        // list began, which the list may predate.
        const listed = new Set(recs.map(branchKeyString));
        for (const [k, b] of this.open)
          if (statuses.includes(b.status) && b.seenAtMs < startedAtMs && !listed.has(k)) this.open.delete(k);
        return recs;
      },
      purge: (beforeMs: number) => timed('purge', () => inner.purge(beforeMs)),
    };
  }

  /** The resource, each step timed and its failures counted; prepare's votes counted. Optional steps stay absent. */
  resource<H>(inner: Resource<H>): Resource<H> {
    const resource = inner.name;
    const timed = <T>(step: Step, run: () => Promise<T>) =>
      measure(this.resourceLatency, this.resourceFailures, { resource, step }, run);
    for (const step of STEPS) this.resourceFailures.inc({ resource, step }, 0);
    const { begin, markCall, undoCall, inDoubt, start, stop } = inner;
    return {
      name: inner.name,
      volatileWork: inner.volatileWork,
      onePhaseByPrepare: inner.onePhaseByPrepare,
      ...(start && { start: (owner?: InstanceOwner) => start.call(inner, owner) }),
      ...(stop && { stop: () => stop.call(inner) }),
      ...(begin && { begin: (b: BranchRecord) => timed('begin', () => begin.call(inner, b)) }),
      ...(markCall && {
        markCall: (b: BranchRecord, h: H | undefined) => timed('mark_call', () => markCall.call(inner, b, h)),
      }),
      ...(undoCall && {
        undoCall: (b: BranchRecord, h: H | undefined) => timed('undo_call', () => undoCall.call(inner, b, h)),
      }),
      ...(inDoubt && { inDoubt: (minAgeMs: number) => inDoubt.call(inner, minAgeMs) }),
      prepare: async (b, h): Promise<PrepareVote> => {
        const vote = await timed('prepare', () => inner.prepare(b, h));
        this.votes.inc({ resource, vote: vote.vote });
        return vote;
      },
      commit: (b, h, onePhase) =>
        timed(onePhase ? 'commit_one_phase' : 'commit', () => inner.commit(b, h, onePhase)),
      rollback: (b, h, reason, info) => timed('rollback', () => inner.rollback(b, h, reason, info)),
    };
  }

  /** `serveMetrics(port, { registry: this.registry, ...options })`. */
  serve(port: number, options: Omit<ServeMetricsOptions, 'registry'> = {}): Promise<MetricsServer> {
    return serveMetrics(port, { ...options, registry: this.registry });
  }

  /** The Prometheus text exposition (what `/metrics` answers). */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}

/** Runs `run`, timing it in `latency` and counting it in `failures` when it throws (unless `refused` says not to). */
async function measure<L extends string, T>(
  latency: Histogram<L>,
  failures: Counter<L>,
  labels: Partial<Record<L, string>>,
  run: () => Promise<T>,
  refused?: (err: unknown) => boolean,
): Promise<T> {
  const end = latency.startTimer(labels);
  try {
    return await run();
  } catch (err) {
    if (!refused?.(err)) failures.inc(labels);
    throw err;
  } finally {
    end();
  }
}

/** A transition the store refused by the rules (a late or repeated move): the caller's business, not a store failure. */
function isRefusal(err: unknown): boolean {
  return err instanceof IllegalBranchTransitionError || err instanceof BranchNotFoundError;
}
