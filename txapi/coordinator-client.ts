/**
 * The coordinator as the transaction API reaches it: over gRPC only (txapi never imports coordinator/), with one
 * grpc-js client per coordinator address. Failures reject with the typed error of their status
 * (common/errors `fromStatus`), so callers tell "the coordinator said no" from "it could not be reached".
 * What is kept per address (stream, client, health) is dropped once the address has had no call and no question
 * whether it is down for `idleCloseMs`: coordinators that come back on new addresses (pods) do not pile up in a
 * long-lived process, and one that is down but still registered stays known as down.
 */
import {
  credentials,
  makeGenericClientConstructor,
  Metadata,
  type Client,
  type ServiceError,
} from '@grpc/grpc-js';
import { DmtpError, fromStatus, isAddress, UnavailableError } from '../common';
import { OutlierDetector } from '../rpc/outlier-ejection';
import { MuxTransport } from '../rpc/mux';
import { UnaryTransport } from '../rpc/transport-unary';
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

interface Method {
  path: string;
  requestSerialize: (v: unknown) => Buffer;
  responseDeserialize: (b: Buffer) => unknown;
}

type Unary = (
  req: unknown,
  md: Metadata,
  opts: { deadline: number },
  cb: (err: ServiceError | null, res?: unknown) => void,
) => void;

/** The coordinator does not serve the multiplexed path (an older one): plain unary from then on. */
const NO_MUX = /does not implement|UNIMPLEMENTED/i;

const UNAVAILABLE = 14;

export interface CoordinatorClientsOptions {
  /** What is kept for an address with no call for this long is closed and forgotten (default 60 s). */
  idleCloseMs?: number;
}

export class CoordinatorClients {
  private readonly idleCloseMs: number;
  /** Per address: calls under way, and when the last one started. */
  private readonly use = new Map<string, { inFlight: number; lastMs: number }>();
  private sweep: NodeJS.Timeout | undefined;
  private readonly clients = new Map<string, Client>();
  /** One multiplexed stream per coordinator (Commit/Rollback of many transactions share it); null = refused. */
  private readonly muxes = new Map<string, MuxTransport | null>();
  /** Coordinators that could not be reached lately: left out when picking one for a new transaction. */
  private readonly health = new OutlierDetector({
    consecutiveFailures: 1,
    baseEjectionMs: 2_000,
    maxEjectionMs: 30_000,
  });

  constructor(options: CoordinatorClientsOptions = {}) {
    this.idleCloseMs = options.idleCloseMs ?? 60_000;
  }

  /** Addresses something is kept for now (tests). */
  get addresses(): number {
    return new Set([...this.clients.keys(), ...this.muxes.keys(), ...this.use.keys()]).size;
  }

  /**
   * True when the coordinator at `address` looks down: a call to it failed UNAVAILABLE lately (left out 2 s,
   * doubling to 30 s while it keeps failing), or its multiplexed stream broke and no new one was accepted yet
   * (a probe stream is opened meanwhile, within the stream's reconnect backoff, so a returning one is seen).
   */
  isDown(address: string): boolean {
    // Asked about while picking: still a candidate (registered), so what is known of it is kept, down or not.
    const u = this.use.get(address);
    if (u) u.lastMs = Date.now();
    if (this.health.isEjected(address)) return true;
    const mux = this.muxes.get(address);
    if (!mux?.broken) return false;
    mux.probe(); // no call goes to a coordinator left out: a probe stream tells when it is back
    return true;
  }

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
    clearInterval(this.sweep);
    this.sweep = undefined;
    this.use.clear();
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
    for (const m of this.muxes.values()) m?.close();
    this.muxes.clear();
  }

  private client(address: string): Client {
    let c = this.clients.get(address);
    if (!c) {
      c = new CoordinatorClientCtor(address, credentials.createInsecure());
      this.clients.set(address, c);
    }
    return c;
  }

  private async call(address: string, method: string, req: unknown, timeoutMs: number): Promise<unknown> {
    let u = this.use.get(address);
    if (!u) this.use.set(address, (u = { inFlight: 0, lastMs: 0 }));
    u.inFlight++;
    u.lastMs = Date.now();
    this.sweep ??= setInterval(() => this.dropIdle(), this.idleCloseMs).unref();
    try {
      const res = await this.callOnce(address, method, req, timeoutMs);
      this.health.onSuccess(address);
      return res;
    } catch (err) {
      if (err instanceof DmtpError && err.code === UNAVAILABLE) this.health.onFailure(address);
      throw err;
    } finally {
      u.inFlight--;
    }
  }

  /** Closes and forgets what is kept for addresses with no call under way and none for `idleCloseMs`. */
  private dropIdle(): void {
    const now = Date.now();
    for (const [address, u] of this.use) {
      if (u.inFlight > 0 || now - u.lastMs < this.idleCloseMs) continue;
      this.use.delete(address);
      this.clients.get(address)?.close();
      this.clients.delete(address);
      this.muxes.get(address)?.close();
      this.muxes.delete(address);
      this.health.forget(address);
    }
    if (this.use.size === 0) {
      clearInterval(this.sweep);
      this.sweep = undefined;
    }
  }

  private async callOnce(address: string, method: string, req: unknown, timeoutMs: number): Promise<unknown> {
    let mux = this.muxes.get(address);
    if (mux === undefined && isAddress(address)) {
      // A large Commit (staged events) goes as a unary call so it cannot hold up the small ones behind it.
      mux = new MuxTransport({ address, fallback: new UnaryTransport(address) });
      this.muxes.set(address, mux);
    }
    if (mux) {
      const def = (CoordinatorService as unknown as Record<string, Method>)[method];
      try {
        const res = await mux.invoke({
          method: def.path,
          request: def.requestSerialize(req),
          metadata: new Metadata(),
          deadline: Date.now() + timeoutMs,
        });
        return def.responseDeserialize(res.response);
      } catch (err) {
        if (!NO_MUX.test((err as Error).message)) {
          if (err instanceof DmtpError) err.details.address ??= address;
          throw err;
        }
        this.muxes.set(address, null); // refused before any call ran: unary from now on
        mux.close();
      }
    }
    return this.unary(address, method, req, timeoutMs);
  }

  private unary(address: string, method: string, req: unknown, timeoutMs: number): Promise<unknown> {
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
