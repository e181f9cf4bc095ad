/**
 * ParticipantAdmin.ListBranches' pure part (branch-listing.ts) over hand-made records: which states, which age,
 * the order and the pages, and the refusals made before anything is read.
 */
import { strict as assert } from 'node:assert';
import { InvalidArgumentError } from '../../../common';
import { BranchState } from '../../../proto/gen/dmtp/v1/types';
import { applyTransition, BRANCH_LIST_LIMITS, type BranchRecord, type BranchStatus } from '../../../txapi';
import { branchPage, checkedQuery } from '../../../txapi/branch-listing';

const NOW = 1_800_000_000_000;

function rec(xid: string, branchId: string, status: BranchStatus, updatedAgoMs = 0): BranchRecord {
  return applyTransition({ xid, branchId }, undefined, status, { resource: 'db' }, NOW - updatedAgoMs);
}

const keys = (rs: readonly BranchRecord[]) => rs.map((r) => `${r.xid}/${r.branchId}`);

describe('txapi branch listing (ParticipantAdmin.ListBranches)', () => {
  const records = [
    rec('c:2', 'db@p-1', 'prepared', 5_000),
    rec('c:1', 'mq@p-1', 'registered', 100),
    rec('c:1', 'db@p-1', 'prepared', 60_000),
    rec('c:3', 'db@p-1', 'committed', 90_000),
    rec('c:0', 'db@p-2', 'rolled_back', 90_000),
  ];

  it('reads both unfinished states by default, one when asked, and refuses a final or unknown one', () => {
    assert.deepEqual(checkedQuery({}).statuses, ['registered', 'prepared']);
    assert.deepEqual(checkedQuery({ states: [BranchState.BRANCH_STATE_PREPARED] }).statuses, ['prepared']);
    assert.deepEqual(
      checkedQuery({
        states: [BranchState.BRANCH_STATE_PREPARED, BranchState.BRANCH_STATE_PREPARED],
      }).statuses,
      ['prepared'],
    );
    for (const state of [BranchState.BRANCH_STATE_COMMITTED, BranchState.BRANCH_STATE_UNSPECIFIED, 42]) {
      assert.throws(
        () => checkedQuery({ states: [BranchState.BRANCH_STATE_PREPARED, state] }),
        (err: unknown) =>
          err instanceof InvalidArgumentError &&
          /^state \S+ cannot be listed \(BRANCH_STATE_REGISTERED or BRANCH_STATE_PREPARED\)$/.test(
            err.message,
          ),
      );
    }
  });

  it('lists the unfinished branches by xid then branch id, final ones left out', () => {
    const page = branchPage(records, checkedQuery({}), NOW);
    assert.deepEqual(keys(page.branches), ['c:1/db@p-1', 'c:1/mq@p-1', 'c:2/db@p-1']);
    assert.equal(page.nextPageToken, '');
    const prepared = branchPage(records, checkedQuery({ states: [BranchState.BRANCH_STATE_PREPARED] }), NOW);
    assert.deepEqual(keys(prepared.branches), ['c:1/db@p-1', 'c:2/db@p-1']);
  });

  it('keeps those unchanged for older_than_ms', () => {
    assert.deepEqual(keys(branchPage(records, checkedQuery({ olderThanMs: 5_000 }), NOW).branches), [
      'c:1/db@p-1',
      'c:2/db@p-1',
    ]);
    assert.deepEqual(keys(branchPage(records, checkedQuery({ olderThanMs: 5_001 }), NOW).branches), [
      'c:1/db@p-1',
    ]);
  });

  it('pages by key: every branch once, even when one changes between pages', () => {
    const many = Array.from({ length: 7 }, (_, i) => rec(`x:${i}`, 'db@p-1', 'prepared'));
    const seen: string[] = [];
    let token = '';
    let pages = 0;
    let store = [...many].reverse();
    do {
      const page = branchPage(store, checkedQuery({ pageSize: 3, pageToken: token }), NOW);
      seen.push(...keys(page.branches));
      token = page.nextPageToken;
      pages++;
      // Between pages the first branch listed finishes and a new one sorting first appears.
      store = [...store.filter((r) => r.xid !== 'x:0'), rec('a:new', 'db@p-1', 'registered')];
    } while (token);
    assert.equal(pages, 3);
    assert.deepEqual(
      seen,
      many.map((r) => `${r.xid}/db@p-1`),
    );
  });

  it('refuses a page size out of range and a token it did not issue, before reading', () => {
    assert.equal(BRANCH_LIST_LIMITS.maxPageSize, 1000);
    assert.equal(branchPage(records, checkedQuery({ pageSize: 0 }), NOW).branches.length, 3);
    assert.throws(
      () => checkedQuery({ pageSize: 1001 }),
      (err: unknown) =>
        err instanceof InvalidArgumentError && err.message === 'page_size 1001 is out of range 0-1000',
    );
    const foreign = Buffer.from('x:coord-1:abc').toString('base64url'); // the coordinator's List token
    for (const pageToken of [foreign, 'not base64 %%', Buffer.from('["b1","x"]').toString('base64url')]) {
      assert.throws(
        () => checkedQuery({ pageToken }),
        (err: unknown) =>
          err instanceof InvalidArgumentError &&
          err.message === 'page_token is not one this participant issued',
      );
    }
  });
});
