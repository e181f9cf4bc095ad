/**
 * What `ParticipantAdmin.ListBranches` answers, as a pure function of the store's unfinished records: the
 * operator's view of the branches a participant holds — in doubt (`prepared`) or with work done and not yet
 * prepared (`registered`) — whatever their resource, which `pg_prepared_xacts` alone cannot show.
 *
 * Pages go by (xid, branch id), as the coordinator's List goes by xid: a branch that changes between two pages
 * is neither listed twice nor makes another one skipped. Bad input is INVALID_ARGUMENT, nothing read.
 */
import { InvalidArgumentError } from '../common';
import { BranchState } from '../proto/gen/dmtp/v1/types';
import type { BranchRecord, BranchStatus } from './branch-store';

export const BRANCH_LIST_LIMITS = { defaultPageSize: 100, maxPageSize: 1000 } as const;

/** The states a listing may ask for (the unfinished ones), by their wire name. */
const LISTABLE: ReadonlyMap<BranchState, BranchStatus> = new Map([
  [BranchState.BRANCH_STATE_REGISTERED, 'registered'],
  [BranchState.BRANCH_STATE_PREPARED, 'prepared'],
]);

export interface BranchListQuery {
  /** Empty or unset: both unfinished states. */
  states?: readonly BranchState[];
  /** Only branches unchanged for at least this long. */
  olderThanMs?: number;
  /** 0 or unset: `BRANCH_LIST_LIMITS.defaultPageSize`. */
  pageSize?: number;
  pageToken?: string;
}

export interface BranchListPage {
  branches: BranchRecord[];
  /** '' on the last page. */
  nextPageToken: string;
}

/** The store states a query reads, checked (INVALID_ARGUMENT for a final or unknown state). */
function listedStatuses(states: readonly BranchState[] = []): BranchStatus[] {
  if (states.length === 0) return [...LISTABLE.values()];
  return [
    ...new Set(
      states.map((s) => {
        const status = LISTABLE.get(s);
        if (status === undefined) {
          throw new InvalidArgumentError(
            `state ${BranchState[s] ?? s} cannot be listed (BRANCH_STATE_REGISTERED or BRANCH_STATE_PREPARED)`,
          );
        }
        return status;
      }),
    ),
  ];
}

const TOKEN_TAG = 'b1';

function tokenAfter(rec: BranchRecord): string {
  return Buffer.from(JSON.stringify([TOKEN_TAG, rec.xid, rec.branchId])).toString('base64url');
}

function afterToken(token: string): [string, string] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(token, 'base64url').toString());
  } catch {
    parsed = undefined;
  }
  if (
    !Array.isArray(parsed) ||
    parsed.length !== 3 ||
    parsed[0] !== TOKEN_TAG ||
    typeof parsed[1] !== 'string' ||
    typeof parsed[2] !== 'string'
  ) {
    throw new InvalidArgumentError('page_token is not one this participant issued');
  }
  return [parsed[1], parsed[2]];
}

function byKey(a: BranchRecord, b: BranchRecord): number {
  if (a.xid !== b.xid) return a.xid < b.xid ? -1 : 1;
  return a.branchId < b.branchId ? -1 : a.branchId > b.branchId ? 1 : 0;
}

/** A query checked: what `branchPage` works from. */
export interface CheckedBranchListQuery {
  /** The store states to read. */
  statuses: BranchStatus[];
  size: number;
  /** The key the page starts after (from the token). */
  after?: [string, string];
  olderThanMs: number;
}

/** The query checked before anything is read — its page size, states and token — once. */
export function checkedQuery(q: BranchListQuery): CheckedBranchListQuery {
  const size = pageSizeOf(q);
  const after = q.pageToken ? afterToken(q.pageToken) : undefined;
  return { statuses: listedStatuses(q.states), size, after, olderThanMs: q.olderThanMs ?? 0 };
}

function pageSizeOf(q: BranchListQuery): number {
  const size = q.pageSize || BRANCH_LIST_LIMITS.defaultPageSize;
  if (!Number.isInteger(size) || size < 0 || size > BRANCH_LIST_LIMITS.maxPageSize) {
    throw new InvalidArgumentError(
      `page_size ${q.pageSize} is out of range 0-${BRANCH_LIST_LIMITS.maxPageSize}`,
    );
  }
  return size;
}

/**
 * One page of `records` (what the store listed for the query's states): those unchanged since
 * `nowMs - olderThanMs`, after the token's key, in key order.
 */
export function branchPage(
  records: readonly BranchRecord[],
  { statuses, size, after, olderThanMs }: CheckedBranchListQuery,
  nowMs: number,
): BranchListPage {
  const wanted = new Set(statuses);
  const cutoff = nowMs - olderThanMs;
  const page = records
    .filter(
      (r) =>
        wanted.has(r.status) &&
        r.updatedAtMs <= cutoff &&
        (!after || r.xid > after[0] || (r.xid === after[0] && r.branchId > after[1])),
    )
    .sort(byKey);
  const more = page.length > size;
  page.length = Math.min(page.length, size);
  return { branches: page, nextPageToken: more ? tokenAfter(page[page.length - 1]) : '' };
}
