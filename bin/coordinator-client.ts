/**
 * Reaching coordinators from the CLI: a plain grpc-js client of the Coordinator service (operator calls only,
 * one deadline each, failures as one-line CliErrors) and where to find them — `--coordinator host:port`
 * (or DMTP_COORDINATOR), else every instance registered as 'dmtp-coordinator' under the registry prefix.
 */
import { makeGenericClientConstructor, type Client, type ServiceError } from '@grpc/grpc-js';
import {
  CoordinatorService,
  GetRequest,
  ListRequest,
  ResolveRequest,
  SettleBranchRequest,
  type GetResponse,
  type ListResponse,
  type ResolveResponse,
  type SettleBranchResponse,
} from '../proto';
import { isAddress } from '../common';
import { OWNER_SERVICE } from '../coordinator';
import { COORDINATOR_SERVICE } from './command';
import { readInstances, type EtcdTarget } from './etcd';
import { CliError, coordinatorError } from './errors';
import { clientTls } from '../rpc/tls';
import { envTls } from './tls';

const Ctor = makeGenericClientConstructor(CoordinatorService, 'Coordinator');

/** A coordinator to call: its address, and its owner id when the registry told us (instance id = owner id). */
export interface CoordinatorTarget {
  address: string;
  id?: string;
}

export class OperatorClient {
  private readonly raw: Client;

  constructor(
    readonly target: CoordinatorTarget,
    private readonly timeoutMs: number,
  ) {
    const tls = clientTls(`coordinator at ${target.address}`, envTls());
    this.raw = new Ctor(target.address, tls.credentials, tls.channelOptions);
  }

  get(xid: string): Promise<GetResponse> {
    return this.call('get', GetRequest.fromPartial({ xid }));
  }

  list(req: Partial<ListRequest>): Promise<ListResponse> {
    return this.call('list', ListRequest.fromPartial(req));
  }

  resolve(req: Partial<ResolveRequest>): Promise<ResolveResponse> {
    return this.call('resolve', ResolveRequest.fromPartial(req));
  }

  settleBranch(req: Partial<SettleBranchRequest>): Promise<SettleBranchResponse> {
    return this.call('settleBranch', SettleBranchRequest.fromPartial(req));
  }

  close(): void {
    this.raw.close();
  }

  private call<K extends 'get' | 'list' | 'resolve' | 'settleBranch'>(
    name: K,
    req: Parameters<(typeof CoordinatorService)[K]['requestSerialize']>[0],
  ): Promise<ReturnType<(typeof CoordinatorService)[K]['responseDeserialize']>> {
    const m = CoordinatorService[name];
    return new Promise((resolve, reject) =>
      this.raw.makeUnaryRequest(
        m.path,
        m.requestSerialize as (v: unknown) => Buffer,
        m.responseDeserialize as (
          b: Buffer,
        ) => ReturnType<(typeof CoordinatorService)[K]['responseDeserialize']>,
        req,
        { deadline: Date.now() + this.timeoutMs },
        (err: ServiceError | null, res) =>
          err ? reject(coordinatorError(err, this.target.address, this.timeoutMs)) : resolve(res!),
      ),
    );
  }
}

/** The coordinators to talk to: the one named by flag/env, or every registered one (never an empty list). */
export async function findCoordinators(
  address: string | undefined,
  etcd: EtcdTarget,
): Promise<CoordinatorTarget[]> {
  if (address) {
    if (!isAddress(address)) throw new CliError(`invalid coordinator address '${address}' (want host:port)`);
    return [{ address }];
  }
  const found = await readInstances(etcd, COORDINATOR_SERVICE);
  if (found.length === 0) {
    throw new CliError(
      `no coordinator registered as '${COORDINATOR_SERVICE}' under ${etcd.prefix} in etcd at ${etcd.endpoints.join(',')}; ` +
        'pass --coordinator host:port',
    );
  }
  return found.map((i) => ({ address: i.address, id: i.instanceId }));
}

/**
 * The coordinator answering for an owner's transactions: the one named by flag/env; else its HA owner route
 * (after a takeover that is the taker); else the registered coordinator with that id; else the only one.
 */
export async function ownerTarget(
  address: string | undefined,
  etcd: EtcdTarget,
  owner: string,
): Promise<CoordinatorTarget> {
  const targets = await findCoordinators(address, etcd);
  if (address) return targets[0];
  const route = (await readInstances(etcd, OWNER_SERVICE)).find((i) => i.instanceId === owner && i.address);
  if (route) return { address: route.address, id: owner };
  if (targets.length === 1) return targets[0];
  const t = targets.find((c) => c.id === owner);
  if (!t) {
    throw new CliError(
      `coordinator '${owner}' (the owner named in the xid) is not registered and no coordinator answers for it; pass --coordinator host:port`,
    );
  }
  return t;
}
