/**
 * The coordinator as the transaction API reaches it: over gRPC only (txapi never imports coordinator/), on rpc's
 * AddressTransports (one multiplexed stream per coordinator address that Commit/Rollback of many transactions
 * share, unary for a large Commit or a coordinator without the stream). Failures reject with the typed error of
 * their status (common/errors `fromStatus`), so callers tell "the coordinator said no" from "it could not be
 * reached". What is kept per address (transports, health) is dropped once the address has had no call and no
 * question whether it is down for `idleCloseMs`: coordinators that come back on new addresses (pods) do not pile
 * up in a long-lived process, and one that is down but still registered stays known as down.
 */
import { Metadata } from '@grpc/grpc-js';
import {
  DmtpError,
  InternalError,
  isAddress,
  SPAN_ATTRIBUTES,
  UnavailableError,
  xidAttributes,
} from '../common';
import { AddressTransports } from '../rpc/address-transports';
import { OutlierDetector } from '../rpc/outlier-ejection';
import { answeredByServer } from '../rpc/not-sent';
import {
  CoordinatorService,
  type CommitRequest,
  type CommitResponse,
  type QueryOutcomeResponse,
  type RollbackRequest,
  type RollbackResponse,
} from '../proto';
import type { Outcome } from '../proto/gen/dmtp/v1/types';
import type { TlsOptions } from '../rpc/tls';
import { clientSpan } from '../rpc/tracing';

interface Method {
  path: string;
  requestSerialize: (v: unknown) => Buffer;
  responseDeserialize: (b: Buffer) => unknown;
}

const UNAVAILABLE = 14;

export interface CoordinatorClientsOptions {
  /** What is kept for an address with no call for this long is closed and forgotten (default 60 s). */
  idleCloseMs?: number;
  /** TLS to the coordinators (default plaintext). */
  tls?: TlsOptions;
  /** A CLIENT span per call (rpc's `clientSpan`), its context in the call's metadata (DmtpOptions.tracing). */
  tracing?: boolean;
}

export class CoordinatorClients {
  private readonly transports: AddressTransports;
  /** Coordinators that could not be reached lately: left out when picking one for a new transaction. */
  private readonly health = new OutlierDetector({
    consecutiveFailures: 1,
    baseEjectionMs: 2_000,
    maxEjectionMs: 30_000,
  });

  private readonly tracing: boolean;

  constructor(options: CoordinatorClientsOptions = {}) {
    this.tracing = options.tracing === true;
    this.transports = new AddressTransports({
      idleCloseMs: options.idleCloseMs,
      tls: options.tls,
      onIdleClose: (address) => this.health.forget(address),
    });
  }

  /** Addresses something is kept for now (tests). */
  get addresses(): number {
    return this.transports.size;
  }

  /**
   * True when the coordinator at `address` looks down: a call to it failed UNAVAILABLE lately (left out 2 s,
   * doubling to 30 s while it keeps failing), or its multiplexed stream broke and no new one was accepted yet
   * (a probe stream is opened meanwhile, within the stream's reconnect backoff, so a returning one is seen).
   */
  isDown(address: string): boolean {
    // Asked about while picking: still a candidate (registered), so what is known of it is kept, down or not.
    this.transports.touch(address);
    if (this.health.isEjected(address)) return true;
    const mux = this.transports.muxOf(address);
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
    this.transports.close();
  }

  private async call(address: string, method: string, req: unknown, timeoutMs: number): Promise<unknown> {
    if (!isAddress(address)) {
      throw new UnavailableError(`coordinator address '${address.slice(0, 80)}' is not host:port`, {
        details: { address },
      });
    }
    const def = (CoordinatorService as unknown as Record<string, Method>)[method];
    const request = def.requestSerialize(req);
    const metadata = new Metadata();
    const invoke = () =>
      this.transports.invoke(address, {
        method: def.path,
        request,
        metadata,
        deadline: Date.now() + timeoutMs,
      });
    let res;
    try {
      res = this.tracing
        ? await clientSpan(
            def.path,
            metadata,
            { [SPAN_ATTRIBUTES.peer]: address, ...xidAttributes(req) },
            invoke,
          )
        : await invoke();
      this.health.onSuccess(address);
    } catch (err) {
      if (err instanceof DmtpError) {
        err.details.address ??= address;
        // A status the coordinator answered itself ("outcome pending", a decision that timed out) says nothing
        // of its health; only one it could not answer (no connection, a broken stream) leaves it out.
        if (answeredByServer(err)) this.health.onSuccess(address);
        else if (err.code === UNAVAILABLE) this.health.onFailure(address);
      }
      throw err;
    }
    try {
      return def.responseDeserialize(res.response);
    } catch (err) {
      // It answered, with bytes that are no response of this method (another service on that port, a broken
      // peer): INTERNAL, which no caller takes for a decision (a Commit's outcome stays unknown).
      throw new InternalError(
        `the coordinator at ${address} answered ${def.path} with a message this client cannot read: ` +
          (err as Error).message,
        { details: { address, method: def.path } },
      );
    }
  }
}
