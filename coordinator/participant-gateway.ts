/**
 * The real ParticipantGateway: Prepare/Commit/Rollback to each branch's instance (BranchRef.address) with the
 * generated ParticipantService over grpc-js, one client per address, idle clients closed by a sweep.
 *
 * TODO(fast path): carry these over the multiplexed call path of rpc/mux (one stream per instance, frames
 * coalesced per tick) once it lands; the interface stays the same.
 */
import {
  Client,
  credentials,
  makeGenericClientConstructor,
  Metadata,
  type ServiceError,
} from '@grpc/grpc-js';
import { fromStatus, MD, systemClock, type Clock, type Timer } from '../common';
import { BranchCommitRequest, BranchRollbackRequest, ParticipantService, PrepareRequest } from '../proto';
import type { BranchRef } from '../proto/gen/dmtp/v1/types';
import type { CommitResult, ParticipantGateway, PrepareResult } from './gateway';

export const GATEWAY_DEFAULTS = {
  /** A client unused for this long is closed. */
  idleCloseMs: 60_000,
};

const ParticipantClient = makeGenericClientConstructor(ParticipantService, 'Participant');

interface Entry {
  client: Client;
  lastUsedMs: number;
  inFlight: number;
}

export class GrpcParticipantGateway implements ParticipantGateway {
  private readonly clients = new Map<string, Entry>();
  private sweep: Timer | undefined;
  private closed = false;
  private readonly idleCloseMs: number;

  constructor(
    options: Partial<typeof GATEWAY_DEFAULTS> = {},
    private readonly clock: Clock = systemClock,
  ) {
    this.idleCloseMs = options.idleCloseMs ?? GATEWAY_DEFAULTS.idleCloseMs;
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

  private call<Req, Res>(
    branch: BranchRef,
    xid: string,
    method: {
      path: string;
      requestSerialize: (v: Req) => Buffer;
      responseDeserialize: (b: Buffer) => Res;
    },
    req: Req,
    timeoutMs: number,
  ): Promise<Res> {
    if (this.closed) return Promise.reject(fromStatus(14, 'participant gateway is closed'));
    const e = this.entry(branch.address);
    const md = new Metadata();
    md.set(MD.xid, xid);
    e.inFlight++;
    e.lastUsedMs = this.clock.now();
    return new Promise<Res>((resolve, reject) => {
      e.client.makeUnaryRequest(
        method.path,
        method.requestSerialize,
        method.responseDeserialize,
        req,
        md,
        { deadline: Date.now() + timeoutMs },
        (err: ServiceError | null, res?: Res) => {
          e.inFlight--;
          e.lastUsedMs = this.clock.now();
          if (err) {
            reject(
              fromStatus(err.code, `${branch.address} ${method.path}: ${err.details || err.message}`, {
                details: { address: branch.address, xid, branch: branch.branchId },
                retriable: true,
              }),
            );
          } else resolve(res as Res);
        },
      );
    });
  }

  private entry(address: string): Entry {
    let e = this.clients.get(address);
    if (!e) {
      const client = new ParticipantClient(address, credentials.createInsecure(), {
        'grpc.max_receive_message_length': 4 * 1024 * 1024,
      });
      e = { client, lastUsedMs: this.clock.now(), inFlight: 0 };
      this.clients.set(address, e);
      this.scheduleSweep();
    }
    return e;
  }

  private scheduleSweep(): void {
    if (this.sweep || this.closed) return;
    this.sweep = this.clock.setTimeout(() => {
      this.sweep = undefined;
      const now = this.clock.now();
      for (const [addr, e] of this.clients) {
        if (e.inFlight === 0 && now - e.lastUsedMs >= this.idleCloseMs) {
          e.client.close();
          this.clients.delete(addr);
        }
      }
      if (this.clients.size > 0) this.scheduleSweep();
    }, this.idleCloseMs);
  }

  /** Clients open now (tests). */
  get open(): number {
    return this.clients.size;
  }

  close(): void {
    this.closed = true;
    this.sweep?.cancel();
    this.sweep = undefined;
    for (const e of this.clients.values()) e.client.close();
    this.clients.clear();
  }
}
