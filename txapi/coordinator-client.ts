/**
 * The coordinator as the transaction API reaches it: over gRPC only (txapi never imports coordinator/), with one
 * grpc-js client per coordinator address. Failures reject with the typed error of their status
 * (common/errors `fromStatus`), so callers tell "the coordinator said no" from "it could not be reached".
 */
import {
  credentials,
  makeGenericClientConstructor,
  Metadata,
  type Client,
  type ServiceError,
} from '@grpc/grpc-js';
import { fromStatus, UnavailableError } from '../common';
import {
  CoordinatorService,
  type CommitRequest,
  type CommitResponse,
  type QueryOutcomeResponse,
  type RollbackRequest,
  type RollbackResponse,
} from '../proto';
import type { Outcome } from '../proto/gen/dmtp/v1/types';

const CoordinatorClientCtor = makeGenericClientConstructor(
  CoordinatorService as unknown as Parameters<typeof makeGenericClientConstructor>[0],
  'dmtp.v1.Coordinator',
);

type Unary = (
  req: unknown,
  md: Metadata,
  opts: { deadline: number },
  cb: (err: ServiceError | null, res?: unknown) => void,
) => void;

export class CoordinatorClients {
  private readonly clients = new Map<string, Client>();

  commit(address: string, req: CommitRequest, timeoutMs: number): Promise<CommitResponse> {
    return this.call(address, 'commit', req, timeoutMs) as Promise<CommitResponse>;
  }

  rollback(address: string, req: RollbackRequest, timeoutMs: number): Promise<RollbackResponse> {
    return this.call(address, 'rollback', req, timeoutMs) as Promise<RollbackResponse>;
  }

  async queryOutcome(address: string, xid: string, branchId: string, timeoutMs: number): Promise<Outcome> {
    const res = (await this.call(
      address,
      'queryOutcome',
      { xid, branchId },
      timeoutMs,
    )) as QueryOutcomeResponse;
    return res.outcome;
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }

  private client(address: string): Client {
    let c = this.clients.get(address);
    if (!c) {
      c = new CoordinatorClientCtor(address, credentials.createInsecure());
      this.clients.set(address, c);
    }
    return c;
  }

  private call(address: string, method: string, req: unknown, timeoutMs: number): Promise<unknown> {
    return new Promise((resolve, reject) => {
      let fn: Unary;
      try {
        const c = this.client(address) as unknown as Record<string, Unary>;
        fn = c[method].bind(c);
      } catch (err) {
        reject(new UnavailableError(`coordinator ${address}: ${String(err)}`, { cause: err }));
        return;
      }
      fn(req, new Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (err) reject(fromStatus(err.code, err.details, { cause: err, details: { address } }));
        else resolve(res);
      });
    });
  }
}
