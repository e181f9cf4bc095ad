/**
 * The legacy adapter, for a system that cannot prepare (a REST service, files): try / confirm / cancel. The
 * business call makes a reservation in the legacy system and records what it needs to find it again with
 * `recordReservation({...})` — durably, in the branch store, so confirm/cancel work after a restart too.
 * Prepare checks the reservation still holds; commit confirms it, rollback cancels it. The branch store gives
 * the same guarantees as for any resource: duplicate confirm/cancel never reach the legacy system twice from one
 * participant, a cancel before the reservation (null rollback) refuses the late business call.
 *
 * Record BEFORE reserving (e.g. the idempotency key you will reserve under): a crash between the two then
 * leaves a key that `cancel` can look up — the other order can leak a reservation nobody knows of.
 * `confirm` and `cancel` must be idempotent and `cancel` must accept a key that was never reserved.
 *
 * A business call still running at its transaction's deadline plus grace (or at the participant's stop) is
 * abandoned and its branch cancelled while its handler may still be waiting on the legacy system: the resource holds
 * no handle to close, and the handler's `recordReservation()` is refused from then on, but a reserve request it
 * already sent can still land after the cancel. So the legacy side should refuse a reserve under a key cancelled
 * before (a cancel that leaves a tombstone, as the branch store does for a null rollback), or let reservations
 * expire unless confirmed (`check` then votes ABORT for an expired one); and give its requests a timeout.
 */
import type { BranchRecord } from '../branch-store';
import { currentBranch } from '../branch-context';
import type { OnePhaseResult, PrepareVote, Resource } from '../resource';

export interface ReservationBranch {
  xid: string;
  branchId: string;
  /** What the business call recorded (empty: nothing was reserved). */
  data: Record<string, string>;
}

export interface ReservationOptions {
  name: string;
  /** Makes the reservation final. Idempotent. */
  confirm(branch: ReservationBranch): Promise<void>;
  /** Releases the reservation. Idempotent; a no-op for one never made. */
  cancel(branch: ReservationBranch, reason: string): Promise<void>;
  /** At prepare: false (or a throw) when the reservation no longer holds (e.g. it expired); votes ABORT. */
  check?(branch: ReservationBranch): Promise<boolean>;
}

function view(b: BranchRecord): ReservationBranch {
  return { xid: b.xid, branchId: b.branchId, data: { ...b.data } };
}

export class ReservationResource implements Resource<undefined> {
  readonly name: string;
  /** Nothing is reserved before the business call durably records it (`recordReservation`, see above). */
  readonly volatileWork = true;
  /** A confirm that timed out may have confirmed: a lone branch is prepared and recorded first, then confirmed. */
  readonly onePhaseByPrepare = true;

  constructor(private readonly o: ReservationOptions) {
    this.name = o.name;
  }

  async prepare(branch: BranchRecord): Promise<PrepareVote> {
    if (Object.keys(branch.data).length === 0) return { vote: 'read_only' };
    try {
      if (this.o.check && !(await this.o.check(view(branch)))) {
        return { vote: 'abort', reason: 'reservation no longer holds' };
      }
    } catch (err) {
      return { vote: 'abort', reason: `reservation check failed: ${(err as Error).message}` };
    }
    return { vote: 'prepared' }; // the reservation itself is the durable prepared state
  }

  /** Confirms (a lone branch too: onePhaseByPrepare, so it was prepared and recorded first). */
  async commit(branch: BranchRecord): Promise<OnePhaseResult> {
    await this.o.confirm(view(branch));
    return { committed: true };
  }

  async rollback(branch: BranchRecord, _handle: undefined, reason: string): Promise<void> {
    await this.o.cancel(view(branch), reason);
  }
}

export function reservationResource(options: ReservationOptions): ReservationResource {
  return new ReservationResource(options);
}

/** Inside a business handler: durably records what identifies this branch's reservation. */
export async function recordReservation(data: Record<string, string>, resource?: string): Promise<void> {
  await currentBranch(resource).record(data);
}
