/**
 * A test participant: serves dmtp.v1.Participant (unary and, unless `mux: false`, the multiplexed path) with
 * the semantics of the SDK's branch barrier (duplicate Commit/Rollback are no-ops; a Rollback before Prepare is
 * recorded and a later Prepare votes ABORT), failure switches, and a record of every call it received.
 *
 * In-process: `await new TestParticipant({ name, switches }).start()`, then `stop()`.
 * As a child process: `npx tsx test/support/test-participant.ts` with TEST_PARTICIPANT (JSON of the options)
 * prints `{"ready":true,"address":…}` and appends every call as a JSON line to TEST_PARTICIPANT_CALLS (a file).
 */
import { appendFileSync } from 'node:fs';
import { Client, credentials, makeGenericClientConstructor, type ServiceError } from '@grpc/grpc-js';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError } from '../../common';
import {
  CoordinatorService,
  ParticipantService,
  type BranchCommitRequest,
  type BranchCommitResponse,
  type BranchRollbackRequest,
  type PrepareRequest,
  type PrepareResponse,
  type QueryOutcomeResponse,
} from '../../proto';
import { Outcome, Vote, type BranchRef } from '../../proto/gen/dmtp/v1/types';
import type { Registry } from '../../registry';
import { RpcServer } from '../../rpc/server';

/** Each switch lists branch-id substrings it applies to ('*' = every branch). */
export interface ParticipantSwitches {
  voteAbort?: string[];
  voteReadOnly?: string[];
  /** Prepare never answers (the coordinator's prepare timeout must fire). */
  hangPrepare?: string[];
  /** Phase-2 Commit fails this many times per branch before it succeeds. */
  failCommitTimes?: number;
  /** Every Prepare takes this long (lets a test kill the coordinator mid phase 1). */
  prepareDelayMs?: number;
  /** A phase-2 Commit of a branch never prepared here is NOT_FOUND, as the SDK answers (default: committed). */
  notFoundUnknown?: boolean;
  /** Every call is INVALID_ARGUMENT (as an SDK participant answers ids not in its own format). */
  refuseIds?: boolean;
}

export interface TestParticipantOptions {
  name: string;
  switches?: ParticipantSwitches;
  /** Serve the multiplexed call path too (default true). */
  mux?: boolean;
  port?: number;
  /** Registers (in-process only) as service `name`, instance `name`, at its address; a restart registers anew. */
  registry?: Registry;
}

export type CallOp = 'prepare' | 'commit' | 'commit-1pc' | 'rollback';
export interface RecordedCall {
  op: CallOp;
  xid: string;
  branchId: string;
  atMs: number;
}

export type BranchFate = 'none' | 'prepared' | 'committed' | 'rolled-back';

const CoordinatorClient = makeGenericClientConstructor(CoordinatorService, 'Coordinator');

function matches(list: string[] | undefined, branchId: string): boolean {
  return !!list?.some((p) => p === '*' || branchId.includes(p));
}

export class TestParticipant {
  readonly calls: RecordedCall[] = [];
  switches: ParticipantSwitches;
  private readonly fates = new Map<string, BranchFate>();
  private readonly commitFailures = new Map<string, number>();
  private readonly hung = new Set<() => void>();
  private readonly delays = new Set<NodeJS.Timeout>();
  private server?: RpcServer;
  onCall?: (c: RecordedCall) => void;

  constructor(readonly options: TestParticipantOptions) {
    this.switches = options.switches ?? {};
  }

  get address(): string {
    return this.server?.address ?? '';
  }

  /** A BranchRef pointing at this participant. */
  branch(branchId: string): BranchRef {
    return {
      branchId,
      service: this.options.name,
      instanceId: this.options.name,
      address: this.address,
      resource: 'db',
    };
  }

  fate(xid: string, branchId: string): BranchFate {
    return this.fates.get(`${xid}|${branchId}`) ?? 'none';
  }

  /** Branches prepared and not yet told the outcome. */
  inDoubt(): { xid: string; branchId: string }[] {
    return [...this.fates]
      .filter(([, f]) => f === 'prepared')
      .map(([k]) => {
        const [xid, branchId] = k.split('|');
        return { xid, branchId };
      });
  }

  private record(op: CallOp, xid: string, branchId: string): void {
    const c = { op, xid, branchId, atMs: Date.now() };
    this.calls.push(c);
    this.onCall?.(c);
  }

  async start(): Promise<this> {
    this.server = new RpcServer({
      services: [
        {
          name: this.options.name,
          definition: ParticipantService,
          handlers: {
            prepare: (call) => this.prepare(call.request),
            commit: (call) => this.commit(call.request),
            rollback: (call) => this.rollback(call.request),
          },
        },
      ],
      mux: this.options.mux !== false,
      port: this.options.port ?? 0,
      registry: this.options.registry,
      instance: { instanceId: this.options.name },
      drainDelayMs: 0,
      gracePeriodMs: 1_000,
    });
    await this.server.start();
    return this;
  }

  async stop(): Promise<void> {
    for (const release of this.hung) release();
    this.hung.clear();
    for (const t of this.delays) clearTimeout(t);
    this.delays.clear();
    await this.server?.stop();
  }

  private async prepare(r: PrepareRequest): Promise<PrepareResponse> {
    this.record('prepare', r.xid, r.branchId);
    const key = `${r.xid}|${r.branchId}`;
    if (this.switches.prepareDelayMs) {
      await new Promise<void>((res) => {
        const t = setTimeout(() => (this.delays.delete(t), res()), this.switches.prepareDelayMs);
        this.delays.add(t);
      });
    }
    if (matches(this.switches.hangPrepare, r.branchId)) {
      await new Promise<void>((res) => this.hung.add(res));
      throw new UnavailableError('participant stopped while hanging in prepare');
    }
    const fate = this.fate(r.xid, r.branchId);
    if (fate === 'rolled-back') return { vote: Vote.VOTE_ABORT, reason: 'branch already rolled back' };
    if (fate === 'committed') return { vote: Vote.VOTE_PREPARED, reason: '' };
    if (matches(this.switches.voteAbort, r.branchId)) {
      this.fates.set(key, 'rolled-back');
      return { vote: Vote.VOTE_ABORT, reason: 'test participant votes abort' };
    }
    if (matches(this.switches.voteReadOnly, r.branchId)) {
      this.fates.set(key, 'committed');
      return { vote: Vote.VOTE_READ_ONLY, reason: '' };
    }
    this.fates.set(key, 'prepared');
    return { vote: Vote.VOTE_PREPARED, reason: '' };
  }

  private async commit(r: BranchCommitRequest): Promise<BranchCommitResponse> {
    const key = `${r.xid}|${r.branchId}`;
    this.record(r.onePhase ? 'commit-1pc' : 'commit', r.xid, r.branchId);
    const fate = this.fate(r.xid, r.branchId);
    if (r.onePhase) {
      if (fate === 'committed') return { committed: true, reason: '' };
      if (fate === 'rolled-back' || matches(this.switches.voteAbort, r.branchId)) {
        this.fates.set(key, 'rolled-back');
        return { committed: false, reason: 'test participant refuses' };
      }
      this.fates.set(key, 'committed');
      return { committed: true, reason: '' };
    }
    const n = this.commitFailures.get(key) ?? 0;
    if (n < (this.switches.failCommitTimes ?? 0)) {
      this.commitFailures.set(key, n + 1);
      throw new UnavailableError(`test participant fails commit (${n + 1})`);
    }
    if (fate === 'rolled-back')
      throw new FailedPreconditionError(`branch ${key} was rolled back: cannot commit`);
    if (fate === 'none' && this.switches.notFoundUnknown)
      throw new NotFoundError(`branch ${r.branchId} of ${r.xid} is unknown here`);
    if (this.switches.refuseIds) throw new InvalidArgumentError(`invalid branch id '${r.branchId}'`);
    this.fates.set(key, 'committed');
    return { committed: true, reason: '' };
  }

  private async rollback(r: BranchRollbackRequest): Promise<Record<string, never>> {
    const key = `${r.xid}|${r.branchId}`;
    this.record('rollback', r.xid, r.branchId);
    if (this.fate(r.xid, r.branchId) === 'committed') {
      throw new FailedPreconditionError(`branch ${key} was committed: cannot roll back`);
    }
    this.fates.set(key, 'rolled-back');
    return {};
  }

  /**
   * What the SDK does for in-doubt branches: asks the owning coordinator (QueryOutcome) and applies the answer.
   * Returns how many branches are still in doubt (PENDING or unreachable).
   */
  async resolveInDoubt(coordinatorAddress: string): Promise<number> {
    const client: Client = new CoordinatorClient(coordinatorAddress, credentials.createInsecure());
    let left = 0;
    try {
      for (const { xid, branchId } of this.inDoubt()) {
        const outcome = await new Promise<Outcome | undefined>((resolve) =>
          client.makeUnaryRequest(
            CoordinatorService.queryOutcome.path,
            CoordinatorService.queryOutcome.requestSerialize,
            CoordinatorService.queryOutcome.responseDeserialize,
            { xid, branchId },
            { deadline: Date.now() + 2_000 },
            (err: ServiceError | null, res?: QueryOutcomeResponse) => resolve(err ? undefined : res!.outcome),
          ),
        );
        if (outcome === Outcome.OUTCOME_COMMIT) this.fates.set(`${xid}|${branchId}`, 'committed');
        else if (outcome === Outcome.OUTCOME_ABORT) this.fates.set(`${xid}|${branchId}`, 'rolled-back');
        else left++;
      }
    } finally {
      client.close();
    }
    return left;
  }
}

// Child-process mode.
if (require.main === module) {
  const options = JSON.parse(
    process.env.TEST_PARTICIPANT ?? '{"name":"test-participant"}',
  ) as TestParticipantOptions;
  const callsFile = process.env.TEST_PARTICIPANT_CALLS;
  const p = new TestParticipant(options);
  if (callsFile) p.onCall = (c) => appendFileSync(callsFile, JSON.stringify(c) + '\n');
  p.start().then(
    () => process.stdout.write(JSON.stringify({ ready: true, address: p.address }) + '\n'),
    (err) => {
      process.stderr.write(String(err) + '\n');
      process.exit(1);
    },
  );
  const stop = () => void p.stop().then(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
