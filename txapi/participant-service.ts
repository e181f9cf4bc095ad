/**
 * The ParticipantService (proto/dmtp/v1/participant.proto) as rpc MethodEntries, so rpc's server helper serves
 * it on the unary and the multiplexed path alike. Thin: decode, validate, call the Participant, encode.
 *
 * Bad input: a malformed xid or branch id is INVALID_ARGUMENT. Prepare for an unknown branch votes ABORT (and
 * records a null rollback); a two-phase Commit for an unknown branch is NOT_FOUND; Rollback for an unknown branch
 * is recorded and answered OK (null rollback). An unknown branch whose id names another instance (or a resource
 * this participant lacks) is answered UNAVAILABLE (Prepare, Commit) or NOT_FOUND (Rollback), nothing recorded.
 *
 * Beside them, the operator's ParticipantAdmin.ListBranches (branch-listing.ts): the store's unfinished branches.
 */
import { trace } from '@opentelemetry/api';
import { InvalidArgumentError, parseXid, SPAN_ATTRIBUTES } from '../common';
import {
  ParticipantAdminService,
  ParticipantService,
  type ListBranchesRequest,
  type ListBranchesResponse,
  type ParticipantBranch,
  type BranchCommitRequest,
  type BranchCommitResponse,
  type BranchRollbackRequest,
  type BranchRollbackResponse,
  type PrepareRequest,
  type PrepareResponse,
} from '../proto';
import { BranchState, Vote } from '../proto/gen/dmtp/v1/types';
import type { MethodEntry, UnaryHandler } from '../rpc/middleware';
import type { BranchKey, BranchRecord } from './branch-store';
import type { Participant } from './participant';

/** The SDK's own ids (`<resource>@<instance>`), a narrower set than the wire allows (common/branch-ref.ts). */
const BRANCH_ID_RE = /^[A-Za-z0-9._@-]{1,128}$/;
const RESOURCE_RE = /^[A-Za-z0-9._-]{0,64}$/;

function keyOf(req: { xid: string; branchId: string; resource: string }): BranchKey {
  parseXid(req.xid);
  if (!BRANCH_ID_RE.test(req.branchId)) {
    throw new InvalidArgumentError(`invalid branch id '${String(req.branchId).slice(0, 140)}'`, {
      details: { xid: req.xid },
    });
  }
  if (!RESOURCE_RE.test(req.resource)) {
    throw new InvalidArgumentError(`invalid resource '${String(req.resource).slice(0, 80)}'`, {
      details: { xid: req.xid },
    });
  }
  return { xid: req.xid, branchId: req.branchId };
}

const VOTES = {
  prepared: Vote.VOTE_PREPARED,
  read_only: Vote.VOTE_READ_ONLY,
  abort: Vote.VOTE_ABORT,
} as const;

/**
 * The methods as entries for rpc's servers. `unlimited`: a server at its `maxConcurrentCalls` still runs them (they
 * finish work already admitted; refusing them would keep the branches' locks longer).
 */
export function participantMethods(p: Participant): MethodEntry[] {
  const prepare: MethodEntry<PrepareRequest, PrepareResponse> = {
    path: ParticipantService.prepare.path,
    deserialize: ParticipantService.prepare.requestDeserialize,
    serialize: ParticipantService.prepare.responseSerialize,
    unlimited: true,
    handler: async ({ request }) => {
      const v = await p.prepare(keyOf(request), request.resource);
      trace
        .getActiveSpan()
        ?.setAttributes({ [SPAN_ATTRIBUTES.branch]: request.branchId, [SPAN_ATTRIBUTES.vote]: v.vote });
      return { vote: VOTES[v.vote], reason: v.vote === 'abort' ? v.reason : '' };
    },
  };
  const commit: MethodEntry<BranchCommitRequest, BranchCommitResponse> = {
    path: ParticipantService.commit.path,
    deserialize: ParticipantService.commit.requestDeserialize,
    serialize: ParticipantService.commit.responseSerialize,
    unlimited: true,
    handler: async ({ request }) => {
      const r = await p.commit(keyOf(request), request.resource, request.onePhase);
      trace.getActiveSpan()?.setAttributes({
        [SPAN_ATTRIBUTES.branch]: request.branchId,
        [SPAN_ATTRIBUTES.outcome]: r.committed ? 'committed' : 'aborted',
      });
      return { committed: r.committed, reason: r.reason ?? '' };
    },
  };
  const rollback: MethodEntry<BranchRollbackRequest, BranchRollbackResponse> = {
    path: ParticipantService.rollback.path,
    deserialize: ParticipantService.rollback.requestDeserialize,
    serialize: ParticipantService.rollback.responseSerialize,
    unlimited: true,
    handler: async ({ request }) => {
      await p.rollback(keyOf(request), request.resource, request.reason);
      trace.getActiveSpan()?.setAttribute(SPAN_ATTRIBUTES.branch, request.branchId);
      return {};
    },
  };
  return [prepare, commit, rollback, listBranchesMethod(p)] as MethodEntry[];
}

function toWire(r: BranchRecord): ParticipantBranch {
  return {
    xid: r.xid,
    branchId: r.branchId,
    resource: r.resource,
    // A listing holds the unfinished states only (branch-listing.ts).
    state: r.status === 'prepared' ? BranchState.BRANCH_STATE_PREPARED : BranchState.BRANCH_STATE_REGISTERED,
    coordinatorAddress: r.coordinatorAddress,
    deadlineAtMs: r.deadlineAtMs,
    createdAtMs: r.createdAtMs,
    updatedAtMs: r.updatedAtMs,
  };
}

/** ParticipantAdmin.ListBranches: the operator's view (`dmtp branch list --participant`), never the coordinator's. */
function listBranchesMethod(p: Participant): MethodEntry<ListBranchesRequest, ListBranchesResponse> {
  return {
    path: ParticipantAdminService.listBranches.path,
    deserialize: ParticipantAdminService.listBranches.requestDeserialize,
    serialize: ParticipantAdminService.listBranches.responseSerialize,
    unlimited: true,
    handler: async ({ request }) => {
      const page = await p.listBranches(request);
      return {
        branches: page.branches.map(toWire),
        nextPageToken: page.nextPageToken,
        instanceId: p.config.instanceId,
      };
    },
  };
}

type ServedHandlers = {
  prepare: UnaryHandler<PrepareRequest, PrepareResponse>;
  commit: UnaryHandler<BranchCommitRequest, BranchCommitResponse>;
  rollback: UnaryHandler<BranchRollbackRequest, BranchRollbackResponse>;
  listBranches: UnaryHandler<ListBranchesRequest, ListBranchesResponse>;
};

/** `participantMethods`' handlers keyed like the generated definitions. */
function servedHandlers(p: Participant): ServedHandlers {
  const [prepare, commit, rollback, listBranches] = participantMethods(p);
  return {
    prepare: prepare.handler as ServedHandlers['prepare'],
    commit: commit.handler as ServedHandlers['commit'],
    rollback: rollback.handler as ServedHandlers['rollback'],
    listBranches: listBranches.handler as ServedHandlers['listBranches'],
  };
}

/**
 * The same handlers keyed like the generated `ParticipantService`, for rpc's server helper:
 * `startServer({ services: [{ name, definition: ParticipantService, handlers: participantHandlers(p) }], middleware: [txServerMiddleware(p)] })`.
 */
export function participantHandlers(p: Participant): Omit<ServedHandlers, 'listBranches'> {
  const { prepare, commit, rollback } = servedHandlers(p);
  return { prepare, commit, rollback };
}

/** The methods `participantBinding` serves: the coordinator's three and the operator's ListBranches. */
export const PARTICIPANT_SERVED = { ...ParticipantService, ...ParticipantAdminService };

/**
 * The binding to hand rpc's `startServer({ services: [...] })` so the participant answers the coordinator's
 * Prepare / Commit / Rollback, and an operator's ParticipantAdmin.ListBranches (`dmtp branch list --participant`),
 * registered under the participant's own service name. `unlimited`: run even when the server is at its
 * `maxConcurrentCalls` (see participantMethods).
 */
export function participantBinding(p: Participant): {
  name: string;
  unlimited: true;
  definition: typeof PARTICIPANT_SERVED;
  handlers: ServedHandlers;
} {
  return {
    name: p.config.service,
    unlimited: true,
    definition: PARTICIPANT_SERVED,
    handlers: servedHandlers(p),
  };
}
