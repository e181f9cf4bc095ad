/**
 * The real ParticipantGateway: Prepare/Commit/Rollback to each branch's instance (BranchRef.address), carried
 * over the multiplexed call path of rpc/mux (one long-lived stream per instance, the frames of many
 * transactions coalesced per event-loop turn), so a prepare or commit costs a frame rather than a unary call.
 * The transports per address are rpc's AddressTransports: an instance that does not serve dmtp.v1.Mux (a
 * participant built without DMTP's server helper) gets plain unary calls, and idle addresses are closed.
 *
 * An instance that moved (restarted on another address, as pods do) is followed: when a call to the address a
 * branch recorded finds nobody (UNAVAILABLE), somebody else (NOT_FOUND, INVALID_ARGUMENT, or an SDK participant's
 * UNAVAILABLE for another instance's branch: the address went to another instance), or no answer in time,
 * `locate` (the registry's live view) is asked where the branch's service and instance id are now. The address
 * found is used from then on for branches that recorded the old one; the call is sent there at once (prepare,
 * commit and rollback are idempotent at the participant), except after a timeout, whose time is spent (the
 * caller's next attempt goes there). A Commit answered NOT_FOUND while the instance is registered nowhere is
 * failed UNAVAILABLE instead: that answer is not the instance's, and phase 2 would count it as done.
 */
import { Metadata } from '@grpc/grpc-js';
import { fromStatus, logger, MD, SPAN_ATTRIBUTES, systemClock, type Clock } from '../common';
import {
  ParticipantService,
  type BranchCommitRequest,
  type BranchRollbackRequest,
  type PrepareRequest,
} from '../proto';
import type { BranchRef } from '../proto/gen/dmtp/v1/types';
import type { Registry } from '../registry';
import { AddressTransports, ADDRESS_TRANSPORTS_DEFAULTS } from '../rpc/address-transports';
import type { CommitResult, ParticipantGateway, PrepareResult } from './gateway';
import type { TlsOptions } from '../rpc/tls';
import { clientSpan } from '../rpc/tracing';

/** Where an instance of a service is now (host:port), or undefined when nobody knows. Must not throw. */
export type InstanceLocator = (service: string, instanceId: string) => Promise<string | undefined>;

export interface GatewayOptions extends Partial<typeof ADDRESS_TRANSPORTS_DEFAULTS> {
  /** Follows instances that moved (see above); without it a branch is only ever called at its recorded address. */
  locate?: InstanceLocator;
  /** TLS to the participants (default plaintext). */
  tls?: TlsOptions;
  /** A CLIENT span per call (rpc's `clientSpan`), its context in the call's metadata. */
  tracing?: boolean;
}

const log = logger('coordinator:gateway');

/** The transports' knobs (rpc/address-transports.ts): 'mux' or 'unary', and when an idle address is closed. */
export const GATEWAY_DEFAULTS = ADDRESS_TRANSPORTS_DEFAULTS;

interface Method<Req, Res> {
  path: string;
  requestSerialize: (v: Req) => Buffer;
  responseDeserialize: (b: Buffer) => Res;
}

/**
 * Statuses after which the instance may be elsewhere: UNAVAILABLE (nobody there, or an SDK participant saying the
 * branch is another instance's), NOT_FOUND (somebody who does not know the branch) and INVALID_ARGUMENT (somebody
 * who refuses its id: an SDK participant given another kind of participant's id) — sent there again at once, …
 */
const RELOCATE_AND_RETRY = new Set([14, 5, 3]);
/** … and DEADLINE_EXCEEDED (looked up for the next attempt only: this one's time is spent). */
const RELOCATE_ONLY = 4;

export class GrpcParticipantGateway implements ParticipantGateway {
  private readonly transports: AddressTransports;
  /**
   * `service/instanceId|recorded address` → where that instance was found when it was no longer at the address its
   * branches recorded, and when that was last used. Only branches that recorded that address are redirected: a
   * branch enlisted since records where the instance is now, and that address wins. Those unused for
   * `idleCloseMs` are dropped when the next one is recorded.
   */
  private readonly moved = new Map<string, { to: string; usedMs: number }>();
  private readonly locate: InstanceLocator | undefined;
  private readonly idleCloseMs: number;
  private readonly tracing: boolean;
  private closed = false;

  constructor(
    options: GatewayOptions = {},
    private readonly clock: Clock = systemClock,
  ) {
    const { locate, tracing, ...config } = options;
    this.locate = locate;
    this.tracing = tracing === true;
    this.idleCloseMs = config.idleCloseMs ?? GATEWAY_DEFAULTS.idleCloseMs;
    this.transports = new AddressTransports({ ...config, clock });
  }

  async prepare(branch: BranchRef, xid: string, timeoutMs: number): Promise<PrepareResult> {
    const req: PrepareRequest = { xid, branchId: branch.branchId, resource: branch.resource };
    const res = await this.call(branch, xid, ParticipantService.prepare, req, timeoutMs);
    return { vote: res.vote, reason: res.reason };
  }

  async commit(branch: BranchRef, xid: string, onePhase: boolean, timeoutMs: number): Promise<CommitResult> {
    const req: BranchCommitRequest = { xid, branchId: branch.branchId, resource: branch.resource, onePhase };
    const res = await this.call(branch, xid, ParticipantService.commit, req, timeoutMs);
    return { committed: res.committed, reason: res.reason };
  }

  async rollback(branch: BranchRef, xid: string, reason: string, timeoutMs: number): Promise<void> {
    const req: BranchRollbackRequest = { xid, branchId: branch.branchId, resource: branch.resource, reason };
    await this.call(branch, xid, ParticipantService.rollback, req, timeoutMs);
  }

  private async call<Req, Res>(
    branch: BranchRef,
    xid: string,
    method: Method<Req, Res>,
    req: Req,
    timeoutMs: number,
  ): Promise<Res> {
    let address = branch.address;
    if (this.moved.size > 0) {
      const m = this.moved.get(movedKey(branch));
      if (m !== undefined) {
        m.usedMs = this.clock.now();
        address = m.to;
      }
    }
    try {
      return await this.callAt(address, branch, xid, method, req, timeoutMs);
    } catch (err) {
      const code = (err as { code?: number }).code ?? 14;
      if (!this.locate || this.closed || (!RELOCATE_AND_RETRY.has(code) && code !== RELOCATE_ONLY)) throw err;
      if (!branch.service || !branch.instanceId) throw err;
      const now = await this.locate(branch.service, branch.instanceId);
      if (this.closed || now === address) throw err; // the instance itself answered
      if (now === undefined) {
        // Nobody is registered as the instance, so a NOT_FOUND came from whoever holds its old address now (a
        // participant that checks no instance ids), not from the instance. Taken as the instance's answer, it
        // would end phase 2 for a branch still prepared there: the commit is tried again instead.
        if (code === 5 && method.path === ParticipantService.commit.path) throw notTheInstance(err, branch);
        throw err;
      }
      this.recordMove(branch, address, now);
      if (code === RELOCATE_ONLY) throw err;
      return this.callAt(now, branch, xid, method, req, timeoutMs);
    }
  }

  /** Records that the branch's instance, not at `tried`, is at `now`. */
  private recordMove(branch: BranchRef, tried: string, now: string): void {
    const key = movedKey(branch);
    const at = this.clock.now();
    for (const [k, m] of this.moved) if (at - m.usedMs >= this.idleCloseMs) this.moved.delete(k);
    if (now === branch.address) this.moved.delete(key);
    else this.moved.set(key, { to: now, usedMs: at });
    log.info('participant instance found at another address', {
      service: branch.service,
      instanceId: branch.instanceId,
      from: tried,
      to: now,
    });
  }

  private async callAt<Req, Res>(
    address: string,
    branch: BranchRef,
    xid: string,
    method: Method<Req, Res>,
    req: Req,
    timeoutMs: number,
  ): Promise<Res> {
    if (this.closed) throw fromStatus(14, 'participant gateway is closed');
    const metadata = new Metadata();
    metadata.set(MD.xid, xid);
    const request = method.requestSerialize(req);
    const invoke = () =>
      this.transports.invoke(address, {
        method: method.path,
        request,
        metadata,
        deadline: Date.now() + timeoutMs,
      });
    try {
      const res = this.tracing
        ? await clientSpan(
            method.path,
            metadata,
            {
              [SPAN_ATTRIBUTES.xid]: xid,
              [SPAN_ATTRIBUTES.branch]: branch.branchId,
              [SPAN_ATTRIBUTES.service]: branch.service,
              [SPAN_ATTRIBUTES.instance]: branch.instanceId,
              [SPAN_ATTRIBUTES.peer]: address,
            },
            invoke,
          )
        : await invoke();
      return method.responseDeserialize(res.response);
    } catch (err) {
      const m = err as Error & { code?: number };
      throw fromStatus(m.code ?? 14, `${address} ${method.path}: ${m.message}`, {
        details: { address, xid, branch: branch.branchId },
        retriable: true,
        cause: err,
      });
    }
  }

  /** Addresses with open transports, and which path each uses now (tests, metrics). */
  paths(): Record<string, 'mux' | 'unary'> {
    return this.transports.paths();
  }

  close(): void {
    this.closed = true;
    this.transports.close();
    this.moved.clear();
  }
}

/**
 * An InstanceLocator over the registry: `lookup` answers from the live view of a watched service, else by one
 * read that starts no watch (the names come from Commit requests: each would otherwise keep an etcd watch for
 * good). No registry yet, no answer within `timeoutMs`, or a failed read: undefined (the recorded address is kept).
 */
export function registryLocator(
  registry: () => Pick<Registry, 'lookup'> | undefined,
  timeoutMs = 2_000,
): InstanceLocator {
  return async (service, instanceId) => {
    const r = registry();
    if (!r) return undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        r.lookup(service, instanceId).then((i) => i?.address || undefined),
        new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), timeoutMs))),
      ]);
    } catch {
      return undefined;
    } finally {
      clearTimeout(timer);
    }
  };
}

function notTheInstance(err: unknown, branch: BranchRef): Error {
  return fromStatus(
    14,
    `${(err as Error).message} (not taken as the branch's answer: no instance ${branch.instanceId} of ${branch.service} is registered there)`,
    {
      details: {
        ...(err as { details?: object }).details,
        service: branch.service,
        instanceId: branch.instanceId,
      },
      retriable: true,
      cause: err,
    },
  );
}

function movedKey(branch: BranchRef): string {
  return `${branch.service}/${branch.instanceId}|${branch.address}`;
}
