/**
 * Recovery rounds of a participant: unprepared branches whose work is gone (a restart) or whose deadline passed
 * are rolled back; prepared, undecided branches — from the branch store and from the resources themselves
 * (PostgreSQL's pg_prepared_xacts) — are resolved by asking their owning coordinator (QueryOutcome) and applying
 * the answer. PENDING is left for the next round; an unreachable coordinator too. A resource's prepared
 * transaction of this instance with no record at all was never voted by this process: it is resolved the same
 * way (another process with this instance id may have voted it), and rolled back without asking only when there
 * is no way to find its coordinator (no registry, no `coordinatorAddressFor`).
 */
import { ownerOf } from '../common';
import { Outcome } from '../proto/gen/dmtp/v1/types';
import type { BranchKey, BranchRecord } from './branch-store';
import type { CoordinatorClients } from './coordinator-client';
import type { Participant } from './participant';

function ownBranch(p: Participant, rec: BranchKey): boolean {
  return rec.branchId.endsWith(`@${p.config.instanceId}`);
}

/** At start: this instance's `registered` branches lost their volatile work with the previous process. */
export async function rollbackLostWork(p: Participant): Promise<void> {
  await rollbackUnprepared(p, () => true, 'branch work was lost in a restart');
}

/** Unprepared branches past deadline + grace (a backstop for the per-branch timer). */
export async function rollbackExpired(p: Participant): Promise<void> {
  const limit = p.clock.now() - p.config.deadlineGraceMs;
  await rollbackUnprepared(p, (r) => r.deadlineAtMs < limit, 'transaction deadline passed before prepare');
}

async function rollbackUnprepared(p: Participant, which: (r: BranchRecord) => boolean, reason: string) {
  for (const rec of await p.store.list(['registered'])) {
    if (!ownBranch(p, rec) || !which(rec)) continue;
    await p
      .locked(rec, async () => {
        const cur = await p.store.get(rec);
        if (cur?.status === 'registered' && (!p.isLive(cur) || which(cur)))
          await p.rollbackLocked(cur, reason);
      })
      .catch((err) => p.log.warn('rollback of an unprepared branch failed', { xid: rec.xid, err }));
  }
}

interface Candidate {
  key: BranchKey;
  resource: string;
  coordinatorAddress: string;
  /** A prepared transaction of this instance that its store has no record of: this process never voted it. */
  unrecorded?: boolean;
}

/** Resolves the prepared branches undecided for at least `minAgeMs`. */
export async function recoverInDoubt(
  p: Participant,
  clients: CoordinatorClients,
  minAgeMs: number,
): Promise<void> {
  const before = p.clock.now() - minAgeMs;
  const found = new Map<string, Candidate>();
  for (const rec of await p.store.list(['prepared'])) {
    if (rec.updatedAtMs <= before) found.set(`${rec.xid}|${rec.branchId}`, { key: rec, ...rec });
  }
  const decided: Candidate[] = [];
  for (const r of p.allResources()) {
    for (const key of (await r.inDoubt?.(minAgeMs)) ?? []) {
      const k = `${key.xid}|${key.branchId}`;
      if (found.has(k)) continue;
      const rec = await p.store.get(key);
      const c = { key, resource: r.name, coordinatorAddress: rec?.coordinatorAddress ?? '' };
      if (!rec && ownBranch(p, key)) found.set(k, { ...c, unrecorded: true });
      else if (rec?.status === 'committed' || rec?.status === 'rolled_back') decided.push(c);
      else found.set(k, c);
    }
  }
  for (const c of decided) {
    await finishAsRecorded(p, c).catch((err) =>
      p.log.warn('prepared branch not finished as recorded this round', { xid: c.key.xid, err }),
    );
  }
  // Asked IN_DOUBT_QUERIES at a time, and a coordinator address that did not answer is not asked again this
  // round: one after another, every branch of a blackholed coordinator cost a query timeout (300 branches at
  // the 3 s default: 15 minutes of start() or stop() waiting, and of expired branches not rolled back).
  const down = new Set<string>();
  const queue = [...found.values()];
  const worker = async () => {
    for (let c = queue.shift(); c && !p.stopping; c = queue.shift()) {
      const { xid, branchId } = c.key;
      await resolveOne(p, clients, c, down).catch((err) =>
        p.log.warn('in-doubt branch not resolved this round', { xid, branchId, err }),
      );
    }
  };
  await Promise.all(Array.from({ length: Math.min(IN_DOUBT_QUERIES, queue.length) }, worker));
}

/** QueryOutcome calls in flight at once in a recovery round. */
const IN_DOUBT_QUERIES = 16;

/**
 * A resource holds a prepared transaction of this instance that the branch store has no record of at all, and
 * there is no way to find its coordinator (no registry, no `coordinatorAddressFor`, no record). A participant
 * votes PREPARED only once its store recorded the branch as prepared, so with one process per instance id (the
 * instance locks see to it) this one was never voted: the process died between the resource's prepare and that
 * record (an enlist held in memory, e.g. volatile work, leaves no record before it). Nobody can have decided
 * COMMIT for it; it is rolled back here. Checked again under the branch's lock, which a prepare in this process
 * holds until its record is written. With a way to find the coordinator it is asked instead (resolveOne): a
 * second process with this instance id and a store of its own may have voted it.
 */
async function rollbackNeverVoted(p: Participant, c: Candidate): Promise<void> {
  const { xid, branchId } = c.key;
  await p.locked(c.key, async () => {
    if (await p.store.get(c.key)) return; // recorded meanwhile: the in-doubt path decides it next round
    const reason = 'prepared here but never voted: the process ended before recording it';
    await p.resource(c.resource)?.rollback(asPrepared(p, c, undefined, ''), undefined, reason);
    await p.store.transition(c.key, 'rolled_back', { resource: c.resource, reason });
    p.log.info('unvoted prepared branch rolled back', { xid, branchId });
  });
}

/**
 * A branch the resource still holds prepared while its record is final: the record decides, no coordinator is
 * asked. It happens when the record was written without the resource (a Rollback for a branch whose unvoted
 * prepared transaction a restart failed to roll back: the rollback is recorded, the prepared transaction kept
 * its locks), and an in-doubt round skipped such a branch for good.
 */
async function finishAsRecorded(p: Participant, c: Candidate): Promise<void> {
  const { xid, branchId } = c.key;
  await p.locked(c.key, async () => {
    const rec = await p.store.get(c.key);
    const resource = p.resource(rec?.resource || c.resource);
    if (!rec || !resource) return;
    if (rec.status === 'committed') await resource.commit(asPrepared(p, c, rec, ''), undefined, false);
    else if (rec.status === 'rolled_back')
      await resource.rollback(asPrepared(p, c, rec, ''), undefined, rec.reason || 'recorded rolled back');
    else return;
    p.log.info('prepared branch finished as its record says', { xid, branchId, status: rec.status });
  });
}

/**
 * Asks the coordinator answering for the xid's owner now: the registry's answer first (after a takeover that is
 * another coordinator than the one that began the transaction), else the address the branch recorded. 'no
 * address': nothing recorded and no way to look one up (neither `registry` nor `coordinatorAddressFor`); a look-up
 * that finds nobody (the owner down, not taken over yet) is asked again next round.
 */
async function askOutcome(
  p: Participant,
  clients: CoordinatorClients,
  c: Candidate,
  down: Set<string>,
): Promise<{ outcome: Outcome; address: string } | 'no address' | undefined> {
  const { xid, branchId } = c.key;
  const lookup = p.config.coordinatorAddressFor;
  const current = await lookup?.(ownerOf(xid)).catch(() => undefined);
  const addresses = [...new Set([current, c.coordinatorAddress].filter((a): a is string => !!a))];
  if (addresses.length === 0 && !lookup) return 'no address';
  if (addresses.length === 0) {
    p.log.warn('in-doubt branch: its coordinator is not found now; asked again next round', {
      xid,
      branchId,
    });
    return undefined;
  }
  let lastErr: unknown;
  for (const address of addresses) {
    if (down.has(address)) continue;
    try {
      return {
        outcome: await clients.queryOutcome(address, xid, branchId, p.config.queryTimeoutMs),
        address,
      };
    } catch (err) {
      lastErr = err;
      const code = (err as { code?: number }).code;
      if (code === 14 || code === 4) down.add(address); // unreachable or silent: not again this round
    }
  }
  if (lastErr === undefined) return undefined; // every address was found down this round: next round
  throw lastErr;
}

async function resolveOne(
  p: Participant,
  clients: CoordinatorClients,
  c: Candidate,
  down: Set<string>,
): Promise<void> {
  const { xid, branchId } = c.key;
  const asked = await askOutcome(p, clients, c, down);
  if (asked === 'no address') {
    if (c.unrecorded) await rollbackNeverVoted(p, c);
    else p.log.warn('in-doubt branch: no address for its coordinator', { xid, branchId });
    return;
  }
  if (!asked) return;
  const { outcome, address } = asked;
  if (outcome !== Outcome.OUTCOME_COMMIT && outcome !== Outcome.OUTCOME_ABORT) return; // pending: next round
  await p.locked(c.key, async () => {
    const rec = await p.store.get(c.key);
    const prepared = asPrepared(p, c, rec, address);
    const resource = p.resource(prepared.resource);
    if (!resource) {
      // Not a resource of this participant (another service on a shared store, or one renamed in an upgrade):
      // recording an outcome without acting on it would leave its work undone for good. Its owner resolves it.
      p.log.warn('in-doubt branch of a resource not configured here: left to its owner', {
        xid,
        branchId,
        resource: prepared.resource,
      });
      return;
    }
    if (outcome === Outcome.OUTCOME_COMMIT) {
      if (rec?.status === 'committed') return; // phase 2 got here first, while the coordinator was asked
      if (rec?.status === 'rolled_back') {
        p.log.error('coordinator says commit but the branch is rolled back', { xid, branchId });
        return;
      }
      await resource.commit(prepared, undefined, false);
      if (rec) await p.store.transition(c.key, 'committed');
      // Committed without a vote of this process: another one ran with this instance id and a store of its own.
      if (c.unrecorded && !rec)
        p.log.warn('unrecorded prepared branch committed: voted by a twin', { xid, branchId });
      else p.log.info('in-doubt branch committed', { xid, branchId });
    } else {
      if (rec?.status === 'rolled_back') return; // phase 2 got here first, while the coordinator was asked
      if (rec?.status === 'committed') {
        p.log.error('coordinator says abort but the branch is committed', { xid, branchId });
        return;
      }
      const reason =
        c.unrecorded && !rec
          ? 'prepared here but never voted (no record); the coordinator reports abort'
          : 'in-doubt branch: the coordinator reports abort';
      await resource.rollback(prepared, undefined, reason);
      await p.store.transition(c.key, 'rolled_back', { resource: prepared.resource, reason });
      p.log.info('in-doubt branch rolled back', { xid, branchId });
    }
  });
}

/** The branch as the resource sees it in phase 2: its record (if any) in the `prepared` state. */
function asPrepared(
  p: Participant,
  c: Candidate,
  rec: BranchRecord | undefined,
  address: string,
): BranchRecord {
  return {
    ...(rec ?? {
      xid: c.key.xid,
      branchId: c.key.branchId,
      coordinatorAddress: address,
      deadlineAtMs: 0,
      data: {},
      createdAtMs: 0,
    }),
    resource: rec?.resource || c.resource,
    status: 'prepared',
    reason: '',
    updatedAtMs: p.clock.now(),
  };
}
