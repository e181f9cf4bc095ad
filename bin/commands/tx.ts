/**
 * `dmtp tx list|show|resolve|settle`: what the coordinators hold, and the operator's ways out of a stuck transaction
 * (resolve: decide one that has no decision; settle: one branch of a decided one, done by hand).
 */
import type { Transaction } from '../../proto';
import { Outcome, TxState } from '../../proto/gen/dmtp/v1/types';
import { formatDuration, UsageError, type ParsedArgs } from '../args';
import { askEvery } from '../errors';
import { COORDINATOR_FLAGS, etcdOf, JSON_FLAG, writeJson, type Command } from '../command';
import { findCoordinators, owning, withClient, xidArg, type CoordinatorTarget } from '../coordinator-client';
import { renderFields, renderTable } from '../table';
import {
  deadlineText,
  eventsText,
  parseState,
  relative,
  stateName,
  STATE_NAMES,
  txJson,
  branchStateName,
  voteName,
} from '../tx-view';

async function targets(args: ParsedArgs): Promise<CoordinatorTarget[]> {
  return findCoordinators(args.flags.coordinator as string | undefined, etcdOf(args));
}

const lastError = (t: Transaction) =>
  t.abortReason || t.branches.find((b) => b.lastError)?.lastError || t.eventsLastError;

const list: Command = {
  spec: {
    name: 'tx list',
    summary: 'List the transactions the coordinators hold (live ones: not yet finished), oldest first.',
    flags: {
      state: {
        type: 'string',
        description: `only this state (${STATE_NAMES.join('|')})`,
        valueName: 'state',
      },
      'older-than': { type: 'duration', description: 'only transactions created at least this long ago' },
      service: {
        type: 'string',
        description: 'only transactions with a branch at this participant service',
        valueName: 'name',
      },
      instance: {
        type: 'string',
        description: 'only transactions with a branch at this participant instance (e.g. one gone for good)',
        valueName: 'id',
      },
      limit: { type: 'integer', description: 'at most this many per coordinator', default: 1000 },
      ...JSON_FLAG,
      ...COORDINATOR_FLAGS,
    },
    examples: [
      'dmtp tx list',
      'dmtp tx list --state preparing --older-than 5m',
      'dmtp tx list --instance inventory-3 --state committing',
      'dmtp tx list --json',
    ],
  },
  async run({ args, io }) {
    // Given empty (`--state=`) is refused by parseState, not read as "every state".
    const state = args.flags.state !== undefined ? parseState(String(args.flags.state), 'tx list') : 0;
    const olderThanMs = Number(args.flags['older-than'] ?? 0);
    const limit = Number(args.flags.limit);
    if (limit < 1) throw new UsageError(`--limit must be at least 1, not ${limit}`, 'tx list');
    const service = String(args.flags.service ?? '');
    const instanceId = String(args.flags.instance ?? '');
    const { answers, unanswered } = await askEvery(
      (await targets(args)).map((t) => ({
        answer: () =>
          withClient(t, args, async (c) => {
            const mine: Transaction[] = [];
            let pageToken = '';
            do {
              const pageSize = Math.min(1000, limit - mine.length);
              const page = await c.list({ state, olderThanMs, pageSize, pageToken, service, instanceId });
              mine.push(...page.transactions.slice(0, limit - mine.length));
              pageToken = page.nextPageToken;
            } while (pageToken && mine.length < limit);
            return mine;
          }),
      })),
      'no coordinator answered',
    );
    const all = answers.flat();
    all.sort((a, b) => a.createdAtMs - b.createdAtMs || (a.xid < b.xid ? -1 : 1));
    // What the others hold is listed; each one that did not answer is named, and the exit code says "partial".
    for (const cause of unanswered) io.err(`dmtp tx list: ${cause}; its transactions are not listed\n`);
    const partial = unanswered.length > 0 ? 1 : undefined;
    if (args.flags.json) {
      writeJson(io, all.map(txJson));
      return partial;
    }
    if (all.length === 0) {
      io.out('no transactions\n');
      return partial;
    }
    const now = Date.now();
    io.out(
      renderTable(
        ['xid', 'state', 'age', 'branches', 'deadline', 'initiator', 'last error'],
        all.map((t) => [
          t.xid,
          stateName(t.state),
          formatDuration(now - t.createdAtMs),
          t.branches.length,
          deadlineText(t, now),
          t.initiator,
          lastError(t),
        ]),
      ),
    );
    return partial;
  },
};

const show: Command = {
  spec: {
    name: 'tx show',
    summary:
      'Show one transaction: its state, and per branch the vote, phase-2 attempts, last error, next retry.',
    positionals: [{ name: 'xid', description: 'the transaction id', required: true }],
    flags: { ...JSON_FLAG, ...COORDINATOR_FLAGS },
    examples: ['dmtp tx show coord-1:m1x2y3:ab12', 'dmtp tx show coord-1:m1x2y3:ab12 --json'],
  },
  async run({ args, io }) {
    const { xid, owner } = xidArg(args, 'tx show');
    const target = await owning(args, owner);
    const res = await withClient(target, args, (c) => c.get(xid));
    const t = res.transaction!;
    if (args.flags.json) return writeJson(io, txJson(t));
    const now = Date.now();
    const at = (ms: number) => (ms ? `${new Date(ms).toISOString()} (${relative(ms, now)})` : '-');
    io.out(
      renderFields([
        ['xid', t.xid],
        ['state', stateName(t.state)],
        ['owner', t.owner],
        ['initiator', t.initiator],
        ['created', at(t.createdAtMs)],
        ['deadline', deadlineText(t, now, true)],
        ['decided', at(t.decidedAtMs)],
        ['abort reason', t.abortReason],
        ['events', eventsText(t, now)],
        [
          'labels',
          Object.entries(t.labels)
            .map(([k, v]) => `${k}=${v}`)
            .join(', '),
        ],
      ]),
    );
    if (t.branches.length === 0) {
      io.out('\nno branches\n');
      return;
    }
    io.out('\n');
    io.out(
      renderTable(
        ['branch', 'service', 'instance', 'address', 'state', 'vote', 'attempts', 'next retry', 'last error'],
        t.branches.map((b) => [
          b.ref?.branchId,
          b.ref?.service,
          b.ref?.instanceId,
          b.ref?.address,
          branchStateName(b.state) + (b.settled ? ' (settled)' : ''),
          voteName(b.vote),
          b.attempts,
          relative(b.nextRetryAtMs, now),
          b.lastError || b.reason,
        ]),
      ),
    );
  },
};

const resolve: Command = {
  spec: {
    name: 'tx resolve',
    summary:
      'Decide a transaction stuck without a durable decision. Refused once a decision is durable; ' +
      '--commit only when every branch is prepared.',
    positionals: [{ name: 'xid', description: 'the transaction id', required: true }],
    flags: {
      commit: { type: 'boolean', description: 'decide COMMIT' },
      abort: { type: 'boolean', description: 'decide ABORT' },
      reason: {
        type: 'string',
        description: 'why (kept as the abort reason)',
        default: 'resolved by an operator',
      },
      ...JSON_FLAG,
      ...COORDINATOR_FLAGS,
    },
    examples: ['dmtp tx resolve coord-1:m1x2y3:ab12 --abort --reason "participant gone"'],
  },
  async run({ args, io }) {
    const { xid, owner } = xidArg(args, 'tx resolve');
    if (Boolean(args.flags.commit) === Boolean(args.flags.abort))
      throw new UsageError('give exactly one of --commit or --abort', 'tx resolve');
    const outcome = args.flags.commit ? Outcome.OUTCOME_COMMIT : Outcome.OUTCOME_ABORT;
    const target = await owning(args, owner);
    const res = await withClient(target, args, (c) =>
      c.resolve({ xid, outcome, reason: String(args.flags.reason) }),
    );
    if (args.flags.json) return writeJson(io, { xid, state: stateName(res.state) });
    // ABORTING for a PREPARING transaction: the abort is decided, and applied once its prepare calls end.
    const note = res.state === TxState.TX_STATE_ABORTING ? ' (abort decided; applied when phase 1 ends)' : '';
    io.out(`${xid}: ${stateName(res.state)}${note}\n`);
  },
};

const settle: Command = {
  spec: {
    name: 'tx settle',
    summary:
      "Tell a decided transaction's coordinator that one branch did by hand what the decision says (its " +
      'participant gone for good): phase 2 stops sending to it. Refused before a decision.',
    positionals: [
      { name: 'xid', description: 'the transaction id', required: true },
      { name: 'branch', description: "the branch id (as 'tx show' lists it)", required: true },
    ],
    flags: {
      reason: { type: 'string', description: 'why (kept as the branch reason)', default: '' },
      ...JSON_FLAG,
      ...COORDINATOR_FLAGS,
    },
    examples: [
      'dmtp tx settle coord-1:m1x2y3:ab12 db@inventory-3 --reason "COMMIT PREPARED by hand on the restored db"',
    ],
  },
  async run({ args, io }) {
    const { xid, owner } = xidArg(args, 'tx settle');
    const branchId = args.positionals[1];
    const target = await owning(args, owner);
    const res = await withClient(target, args, (c) =>
      c.settleBranch({ xid, branchId, reason: String(args.flags.reason) }),
    );
    if (args.flags.json)
      return writeJson(io, {
        xid,
        branch: branchId,
        settled: res.settled,
        branchState: branchStateName(res.branchState),
        state: stateName(res.state),
      });
    const what = res.settled ? 'settled' : 'had already acknowledged; nothing changed';
    io.out(
      `${xid}: branch ${branchId} ${what} (${branchStateName(res.branchState)}); ${stateName(res.state)}\n`,
    );
  },
};

export const commands: Record<string, Command> = { list, show, resolve, settle };
