/**
 * `dmtp branch commit|rollback <xid> <branch>`: an operator's phase 2 for one branch, sent to its participant
 * instance as its coordinator would send it. For an in-doubt branch (prepared, undecided) whose coordinator is gone
 * for good — its log lost, nobody took its transactions over — which the participant's recovery would otherwise
 * ask about for ever while the branch holds its locks. Through the participant, not by hand in its database, so
 * its branch store and its resource agree and its recovery stops asking.
 *
 * The coordinator answering for the xid is asked first and an outcome contradicting its answer is refused (a
 * PENDING one refuses both): only `--coordinator-gone` sends without asking, the outcome then the operator's to know.
 *
 * `dmtp branch list --database URL`: the PostgreSQL branches prepared and not finished (pgResource's gids in
 * pg_prepared_xacts), oldest first, each with its coordinator's answer — what to send it, or to run by hand when its
 * participant is gone too. `--participant ADDR` / `--service S`: what the participant instances' branch stores hold
 * unfinished (ParticipantAdmin.ListBranches), of any resource, with the same answers. Read-only.
 */
import { status, type ServiceError } from '@grpc/grpc-js';
import { Client } from 'pg';
import { isAddress, parseXid } from '../../common';
import {
  BranchCommitRequest,
  BranchRollbackRequest,
  ListBranchesRequest,
  ParticipantAdminService,
  ParticipantService,
  type ParticipantBranch,
} from '../../proto';
import { BranchState, Outcome } from '../../proto/gen/dmtp/v1/types';
import { parseGid, PG_DEFAULTS } from '../../txapi';
import { isUnanswered, statementWithin } from '../../txapi/pg-pool';
import { formatDuration, UsageError, type ParsedArgs } from '../args';
import { COORDINATOR_FLAGS, etcdOf, JSON_FLAG, writeJson, type Command, type Io } from '../command';
import { CliGrpcClient, owning, withClient, xidArg } from '../coordinator-client';
import { readInstances } from '../etcd';
import { askEvery, CliError, formatError, participantError } from '../errors';
import { renderTable } from '../table';

type Decision = 'commit' | 'rollback';

/** SDK branch ids are `<resource>@<instance id>`: the two halves, when the id has that shape. */
function splitBranchId(branchId: string): { resource?: string; instanceId?: string } {
  const at = branchId.lastIndexOf('@');
  if (at <= 0 || at === branchId.length - 1) return {};
  return { resource: branchId.slice(0, at), instanceId: branchId.slice(at + 1) };
}

/** `--participant`, else `--service`'s instance named in the branch id, from the registry. */
async function participantAddress(args: ParsedArgs, branchId: string, command: string): Promise<string> {
  const given = args.flags.participant as string | undefined;
  if (given !== undefined) {
    if (!isAddress(given))
      throw new UsageError(`invalid participant address '${given}' (want host:port)`, command);
    return given;
  }
  const service = args.flags.service as string | undefined;
  if (service === undefined)
    throw new UsageError(
      'give --participant host:port, or --service to find the instance in the registry',
      command,
    );
  const { instanceId } = splitBranchId(branchId);
  if (!instanceId) {
    throw new UsageError(
      `branch id '${branchId}' does not name its instance (<resource>@<instance>): give --participant host:port`,
      command,
    );
  }
  const etcd = etcdOf(args);
  const found = (await readInstances(etcd, service)).find((i) => i.instanceId === instanceId);
  if (!found) {
    throw new CliError(
      `instance '${instanceId}' of service '${service}' is not registered under ${etcd.prefix}; give --participant host:port`,
    );
  }
  return found.address;
}

/** Refuses what would contradict the coordinator answering for the xid; an unanswered question refuses too. */
async function checkWithCoordinator(
  args: ParsedArgs,
  xid: string,
  owner: string,
  branchId: string,
  decision: Decision,
): Promise<void> {
  let outcome: Outcome;
  try {
    const target = await owning(args, owner);
    outcome = (await withClient(target, args, (c) => c.queryOutcome(xid, branchId))).outcome;
  } catch (err) {
    // The way on first: the cause may be long (it is cut at the line's end).
    throw new CliError(
      `coordinator of ${xid} not asked; if gone for good, decide with --coordinator-gone: ` +
        formatError(err).replace(/^dmtp: /, ''),
    );
  }
  if (outcome === Outcome.OUTCOME_PENDING) {
    throw new CliError(
      `refused: its coordinator has not decided ${xid} yet (PENDING); decide it there (dmtp tx resolve)`,
    );
  }
  if (outcome !== Outcome.OUTCOME_COMMIT && outcome !== Outcome.OUTCOME_ABORT)
    throw new CliError(
      `refused: its coordinator gave no outcome for ${xid} (${Outcome[outcome] ?? outcome})`,
    );
  const says: Decision = outcome === Outcome.OUTCOME_COMMIT ? 'commit' : 'rollback';
  if (says === decision) return;
  throw new CliError(
    says === 'commit'
      ? `refused: its coordinator reports COMMIT for ${xid}: the branch must commit`
      : `refused: its coordinator reports ABORT for ${xid}: the branch must roll back ` +
          '(presumed abort: if it lost its log, decide with --coordinator-gone)',
  );
}

function branchCommand(decision: Decision): Command {
  const name = `branch ${decision}`;
  const done = decision === 'commit' ? 'committed' : 'rolled back';
  return {
    spec: {
      name,
      summary:
        `${decision === 'commit' ? 'Commit' : 'Roll back'} one in-doubt branch at its participant, as its coordinator ` +
        'would: for a branch whose coordinator is gone for good. Refused when the coordinator answers otherwise.',
      positionals: [
        { name: 'xid', description: 'the transaction id', required: true },
        {
          name: 'branch',
          description: 'the branch id (an SDK participant: <resource>@<instance>)',
          required: true,
        },
      ],
      flags: {
        participant: {
          type: 'string',
          description:
            "the participant instance's address; without it, --service's instance from the registry",
          valueName: 'host:port',
        },
        service: {
          type: 'string',
          description:
            'the participant service: its instance named in the branch id is looked up in the registry',
          valueName: 'name',
        },
        resource: {
          type: 'string',
          description: "the branch's resource (default: what precedes '@' in the branch id)",
          valueName: 'name',
        },
        'coordinator-gone': {
          type: 'boolean',
          description:
            'do not ask the coordinator (gone for good, its log lost): the outcome is yours to know',
        },
        ...(decision === 'rollback'
          ? {
              reason: {
                type: 'string' as const,
                description: 'why (kept as the branch reason)',
                default: 'rolled back by an operator',
              },
            }
          : {}),
        ...JSON_FLAG,
        ...COORDINATOR_FLAGS,
      },
      examples: [
        `dmtp branch ${decision} coord-1:m1x2y3:ab12 db@inventory-3 --service inventory`,
        `dmtp branch ${decision} coord-1:m1x2y3:ab12 db@inventory-3 --participant 10.0.0.6:7001 --coordinator-gone`,
      ],
    },
    async run({ args, io }) {
      const { xid, owner } = xidArg(args, name);
      const branchId = args.positionals[1];
      const resource =
        args.flags.resource !== undefined ? String(args.flags.resource) : splitBranchId(branchId).resource;
      if (resource === undefined) {
        throw new UsageError(
          `branch id '${branchId}' does not name its resource (<resource>@<instance>): give --resource`,
          name,
        );
      }
      const address = await participantAddress(args, branchId, name);
      if (!args.flags['coordinator-gone']) await checkWithCoordinator(args, xid, owner, branchId, decision);
      const c = new CliGrpcClient(
        ParticipantService,
        `participant at ${address}`,
        address,
        Number(args.flags.timeout),
        participantError,
      );
      try {
        if (decision === 'commit') {
          const r = await c.call(
            'commit',
            BranchCommitRequest.fromPartial({ xid, branchId, resource, onePhase: false }),
          );
          if (!r.committed)
            throw new CliError(
              `the participant at ${address} did not commit branch ${branchId} of ${xid}: ${r.reason}`,
            );
        } else {
          const reason = String(args.flags.reason);
          await c.call('rollback', BranchRollbackRequest.fromPartial({ xid, branchId, resource, reason }));
        }
      } finally {
        c.close();
      }
      if (args.flags.json)
        return writeJson(io, { xid, branch: branchId, participant: address, outcome: done });
      io.out(`${xid}: branch ${branchId} ${done} at the participant at ${address}\n`);
    },
  };
}

/** A prepared PostgreSQL transaction of a pgResource branch, from pg_prepared_xacts. */
interface PreparedBranch {
  xid: string;
  branchId: string;
  gid: string;
  database: string;
  ageMs: number;
}

/** Where `url` points, for messages: host, port and database, never the password. */
function databaseLabel(url: string): string {
  try {
    const u = new URL(url);
    return `PostgreSQL at ${u.hostname}:${u.port || 5432}${u.pathname}`;
  } catch {
    throw new CliError('invalid --database URL (want postgres://user@host:port/db)');
  }
}

/** The prepared transactions whose gid is a pgResource branch's (`<prefix><xid>|<branch>`), oldest first. */
async function preparedBranches(
  url: string,
  gidPrefix: string,
  timeoutMs: number,
): Promise<PreparedBranch[]> {
  const label = databaseLabel(url);
  // The connect and the statement bounded as DMTP's own PostgreSQL parts bound theirs (a server that accepts and
  // then says nothing held pg for good).
  const client = new Client({
    connectionString: url,
    connectionTimeoutMillis: timeoutMs,
    application_name: 'dmtp branch list',
  });
  client.on('error', () => undefined); // a connection lost after the answer: nothing left to do with it
  let silent = false;
  try {
    await client.connect();
    const r = await statementWithin<{ gid: string; database: string; age_ms: string }>(
      client,
      timeoutMs,
      `SELECT gid, database, (extract(epoch FROM now() - prepared) * 1000)::bigint AS age_ms
       FROM pg_prepared_xacts WHERE starts_with(gid, $1) ORDER BY prepared`,
      [gidPrefix],
    );
    return r.rows.flatMap((row) => {
      const key = parseGid(gidPrefix, row.gid);
      return key ? [{ ...key, gid: row.gid, database: row.database, ageMs: Number(row.age_ms) }] : [];
    });
  } catch (err) {
    silent = isUnanswered(err);
    const why = silent ? `no answer within ${formatDuration(timeoutMs)}` : (err as Error).message;
    throw new CliError(`${label} did not list its prepared transactions: ${why}`);
  } finally {
    // A silent server would not answer the goodbye either: the command's exit closes that socket.
    if (!silent) await client.end().catch(() => undefined);
  }
}

/**
 * The outcome each branch's coordinator answers, or why there is none: one client per coordinator, asked one
 * branch after another (however many branches are prepared), the coordinators at once.
 */
async function outcomesOf(
  args: ParsedArgs,
  branches: ReadonlyArray<{ xid: string; branchId: string }>,
): Promise<string[]> {
  const outcomes: string[] = [];
  const noAnswer = (err: unknown) => `no answer: ${formatError(err).replace(/^dmtp: /, '')}`;
  const byOwner = new Map<string, number[]>();
  branches.forEach((b, i) => {
    try {
      const owner = parseXid(b.xid).owner;
      byOwner.set(owner, [...(byOwner.get(owner) ?? []), i]);
    } catch (err) {
      outcomes[i] = noAnswer(err); // a gid of the prefix's shape whose xid is not one
    }
  });
  await Promise.all(
    [...byOwner].map(async ([owner, rows]) => {
      try {
        await withClient(await owning(args, owner), args, async (c) => {
          for (const i of rows) {
            const b = branches[i];
            outcomes[i] = await c
              .queryOutcome(b.xid, b.branchId)
              .then(({ outcome }) => Outcome[outcome].replace(/^OUTCOME_/, ''), noAnswer);
          }
        });
      } catch (err) {
        for (const i of rows) outcomes[i] ??= noAnswer(err);
      }
    }),
  );
  return outcomes;
}

/** What `--state` asks a participant for. */
const STATE_CHOICES: Record<string, BranchState[]> = {
  prepared: [BranchState.BRANCH_STATE_PREPARED],
  registered: [BranchState.BRANCH_STATE_REGISTERED],
  open: [BranchState.BRANCH_STATE_REGISTERED, BranchState.BRANCH_STATE_PREPARED],
};

/** Pages followed at most per instance: 1,000 branches each (the server's maximum page). */
const MAX_PAGES = 100;

function adminError(err: ServiceError, address: string, timeoutMs: number): Error {
  if (err.code === status.UNIMPLEMENTED) {
    return new CliError(
      `the participant at ${address} does not list its branches (ParticipantAdmin.ListBranches is not served: ` +
        'not a DMTP SDK participant, or one older than it)',
    );
  }
  return participantError(err, address, timeoutMs);
}

/** Every page of one instance's unfinished branches. */
async function branchesAt(
  address: string,
  timeoutMs: number,
  query: { states: BranchState[]; olderThanMs: number },
): Promise<{ instanceId: string; branches: ParticipantBranch[] }> {
  const c = new CliGrpcClient(
    ParticipantAdminService,
    `participant at ${address}`,
    address,
    timeoutMs,
    adminError,
  );
  try {
    const branches: ParticipantBranch[] = [];
    let pageToken = '';
    let instanceId = '';
    for (let pages = 0; pages < MAX_PAGES; pages++) {
      const r = await c.call(
        'listBranches',
        ListBranchesRequest.fromPartial({ ...query, pageSize: 1000, pageToken }),
      );
      branches.push(...r.branches);
      instanceId = r.instanceId;
      pageToken = r.nextPageToken;
      if (!pageToken) return { instanceId, branches };
    }
    throw new CliError(
      `the participant at ${address} has more than ${MAX_PAGES * 1000} unfinished branches: narrow with --older-than`,
    );
  } finally {
    c.close();
  }
}

/**
 * `branch list --participant|--service`: what the participant instances' branch stores hold unfinished, of any
 * resource, oldest change first. As `tx list` does with coordinators: what the instances that answer hold is
 * listed, each one that did not is a line on stderr, and the exit code is 1; none answering is one error.
 */
async function listAtParticipants(args: ParsedArgs, io: Io): Promise<number | undefined> {
  const name = 'branch list';
  const stateName = String(args.flags.state ?? 'prepared');
  const states = STATE_CHOICES[stateName];
  if (!states) throw new UsageError(`invalid --state '${stateName}' (prepared, registered or open)`, name);
  const query = { states, olderThanMs: Number(args.flags['older-than'] ?? 0) };
  const timeoutMs = Number(args.flags.timeout);
  const given = args.flags.participant as string | undefined;
  if (given !== undefined && args.flags.service !== undefined)
    throw new UsageError('give --participant or --service, not both', name);
  let targets: { address: string; instanceId?: string }[];
  let where: string; // for "no branch at …"
  if (given !== undefined) {
    if (!isAddress(given))
      throw new UsageError(`invalid participant address '${given}' (want host:port)`, name);
    targets = [{ address: given }];
    where = `the participant at ${given}`;
  } else {
    const service = String(args.flags.service);
    const etcd = etcdOf(args);
    const found = await readInstances(etcd, service);
    if (found.length === 0)
      throw new CliError(`no instance of service '${service}' is registered under ${etcd.prefix}`);
    targets = found.map((i) => ({ address: i.address, instanceId: i.instanceId }));
    where = `service '${service}'`;
  }
  const { answers, unanswered } = await askEvery(
    targets.map((t) => ({
      label: t.instanceId ? `instance ${t.instanceId}: ` : '',
      answer: () => branchesAt(t.address, timeoutMs, query),
    })),
    `no instance of ${where} answered`,
  );
  // Instances sharing a store (PgBranchStore's table) list the same branches: each is shown once.
  const byKey = new Map<string, ParticipantBranch & { answeredBy: string }>();
  for (const a of answers) {
    for (const b of a.branches) {
      const key = `${b.xid}|${b.branchId}`;
      if (!byKey.has(key)) byKey.set(key, { ...b, answeredBy: a.instanceId });
    }
  }
  const branches = [...byKey.values()].sort(
    (a, b) => a.updatedAtMs - b.updatedAtMs || (a.xid < b.xid ? -1 : a.xid > b.xid ? 1 : 0),
  );
  const outcomes = args.flags['no-outcome'] ? undefined : await outcomesOf(args, branches);
  for (const cause of unanswered) io.err(`dmtp ${name}: ${cause}; its branches are not listed\n`);
  const partial = unanswered.length > 0 ? 1 : undefined;
  const now = Date.now();
  const rows = branches.map((b, i) => ({
    xid: b.xid,
    branch: b.branchId,
    resource: b.resource,
    state: b.state === BranchState.BRANCH_STATE_PREPARED ? 'prepared' : 'registered',
    sinceAgoMs: Math.max(0, now - b.updatedAtMs),
    deadlineAtMs: b.deadlineAtMs,
    coordinatorAddress: b.coordinatorAddress,
    answeredBy: b.answeredBy,
    ...(outcomes ? { outcome: outcomes[i] } : {}),
  }));
  if (args.flags.json) {
    writeJson(io, rows);
    return partial;
  }
  if (rows.length === 0) {
    io.out(`no ${stateName === 'open' ? 'unfinished' : stateName} branch at ${where}\n`);
    return partial;
  }
  io.out(
    renderTable(
      ['xid', 'branch', 'state', 'since', ...(outcomes ? ['outcome'] : [])],
      rows.map((r) => [
        r.xid,
        r.branch,
        r.state,
        `${formatDuration(r.sinceAgoMs)} ago`,
        ...(outcomes ? [r.outcome] : []),
      ]),
    ),
  );
  return partial;
}

const list: Command = {
  spec: {
    name: 'branch list',
    summary:
      "In-doubt branches, oldest first, each with its coordinator's answer: with --database, the PostgreSQL " +
      'branches prepared and not finished (pgResource gids in pg_prepared_xacts); with --participant or --service, ' +
      "what the participant instances' branch stores hold unfinished, of any resource. COMMIT or ABORT says what " +
      'the branch must do (dmtp branch commit|rollback, or COMMIT/ROLLBACK PREPARED by hand when its participant ' +
      'is gone too); PENDING, that it is still undecided. A coordinator that lost its log answers ABORT for what ' +
      'it forgot (presumed abort). Read-only.',
    positionals: [],
    flags: {
      database: {
        type: 'string',
        description:
          "the participant's database (its prepared transactions are the cluster's, every database's)",
        env: 'DATABASE_URL',
        valueName: 'url',
      },
      participant: {
        type: 'string',
        description: "a participant instance's address: list its branch store instead of a database",
        valueName: 'host:port',
      },
      service: {
        type: 'string',
        description: 'every registered instance of this participant service: list their branch stores',
        valueName: 'name',
      },
      state: {
        type: 'string',
        description:
          'with --participant or --service: prepared (in doubt, the default), registered (work done, not yet ' +
          'prepared) or open (both)',
        valueName: 'state',
      },
      'older-than': {
        type: 'duration',
        description: 'with --participant or --service: only branches unchanged for at least this long',
      },
      'gid-prefix': {
        type: 'string',
        description: "the pgResource's gidPrefix",
        default: PG_DEFAULTS.gidPrefix,
        valueName: 'prefix',
      },
      'no-outcome': {
        type: 'boolean',
        description: 'do not ask the coordinators (only the database is read)',
      },
      ...JSON_FLAG,
      ...COORDINATOR_FLAGS,
    },
    examples: [
      'dmtp branch list --database postgres://postgres@10.0.0.5:5432/inventory',
      'dmtp branch list --database "$DATABASE_URL" --no-outcome --json',
      'dmtp branch list --service inventory --older-than 1m',
      'dmtp branch list --participant 10.0.0.6:7001 --state open',
    ],
  },
  async run({ args, io }) {
    if (args.flags.participant !== undefined || args.flags.service !== undefined)
      return listAtParticipants(args, io);
    for (const f of ['state', 'older-than'])
      if (args.flags[f] !== undefined)
        throw new UsageError(
          `--${f} is for a participant's store: give --participant or --service`,
          'branch list',
        );
    const url = args.flags.database as string | undefined;
    if (!url)
      throw new UsageError(
        'give --database (or set DATABASE_URL), --participant or --service',
        'branch list',
      );
    const gidPrefix = String(args.flags['gid-prefix']);
    const branches = await preparedBranches(url, gidPrefix, Number(args.flags.timeout));
    const outcomes = args.flags['no-outcome'] ? undefined : await outcomesOf(args, branches);
    const rows = branches.map((b, i) => ({
      xid: b.xid,
      branch: b.branchId,
      gid: b.gid,
      database: b.database,
      preparedAgoMs: b.ageMs,
      ...(outcomes ? { outcome: outcomes[i] } : {}),
    }));
    if (args.flags.json) return writeJson(io, rows);
    if (rows.length === 0) {
      io.out(`no prepared branch (gid prefix '${gidPrefix}') in the cluster of ${databaseLabel(url)}\n`);
      return;
    }
    io.out(
      renderTable(
        ['xid', 'branch', 'database', 'prepared', ...(outcomes ? ['outcome'] : [])],
        rows.map((r) => [
          r.xid,
          r.branch,
          r.database,
          `${formatDuration(r.preparedAgoMs)} ago`,
          ...(outcomes ? [r.outcome] : []),
        ]),
      ),
    );
  },
};

export const commands: Record<string, Command> = {
  list,
  commit: branchCommand('commit'),
  rollback: branchCommand('rollback'),
};
