/**
 * A server's limit on the calls its handlers run at once, over both call paths and every connection
 * (`ServerOptions.maxConcurrentCalls`): the per-stream limit of the multiplexed path bounds one client, this bounds
 * the instance, whatever number of clients call it. A call beyond the limit is refused at once — before its
 * handler or any middleware runs — with RESOURCE_EXHAUSTED marked as not run, so a DMTP client sends it to another
 * instance (within its retry budget) instead of queueing more work on a saturated one. Load shedding, not a queue:
 * a queue would only add the wait to a call's latency while the instance stays saturated.
 *
 * Methods that finish work already admitted (a participant's Prepare, Commit and Rollback: refusing them keeps the
 * branch's locks longer) are marked `unlimited` and always run; they are counted all the same.
 */
import { ResourceExhaustedError } from '../common/errors';

export class CallAdmission {
  private running = 0;
  private refused = 0;

  /** `limit`: a whole number ≥ 1, or Infinity (no limit). */
  constructor(readonly limit: number) {}

  /** Handlers running now (on both paths). */
  get active(): number {
    return this.running;
  }

  /** Calls refused since the start. */
  get refusedTotal(): number {
    return this.refused;
  }

  /**
   * Takes a place for a call (always for an `unlimited` one), or returns the refusal to answer it with. A place
   * taken is given back with `leave()` once the handler settles.
   */
  enter(unlimited: boolean | undefined, method: string): ResourceExhaustedError | undefined {
    if (this.running >= this.limit && !unlimited) {
      this.refused++;
      return new ResourceExhaustedError(
        `this instance is running ${this.running} calls, its limit (maxConcurrentCalls): ${method} was not run; ` +
          'try another instance',
        { details: { method, maxConcurrentCalls: this.limit } },
      );
    }
    this.running++;
    return undefined;
  }

  leave(): void {
    this.running--;
  }
}
