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
  QueryOutcomeRequest,
  ResolveRequest,
  SettleBranchRequest,
  type GetResponse,
  type ListResponse,
  type QueryOutcomeResponse,
  type ResolveResponse,
  type SettleBranchResponse,
} from '../proto';
import { isAddress, parseXid } from '../common';
import { UsageError, type ParsedArgs } from './args';
import { OWNER_SERVICE } from '../coordinator';
import { COORDINATOR_SERVICE, etcdOf } from './command';
import { readInstances, type EtcdTarget } from './etcd';
import { CliError, coordinatorError } from './errors';
import { clientTls } from '../rpc/tls';
import { envTls } from './tls';

/** What the CLI needs of a generated grpc-js service definition: per method its path and (de)serializers. */
type Methods = Record<
  string,
  { path: string; requestSerialize: (v: never) => Buffer; responseDeserialize: (b: Buffer) => unknown }
>;
type Req<S extends Methods, K extends keyof S> = Parameters<S[K]['requestSerialize']>[0];
type Res<S extends Methods, K extends keyof S> = ReturnType<S[K]['responseDeserialize']>;

/**
 * A plain grpc-js client of one service for the CLI: TLS from DMTP_TLS_*, one deadline per call, and failures
 * turned into one-line errors by `toError` (the address and the timeout in hand).
 */
export class CliGrpcClient<S extends Methods> {
  private readonly raw: Client;

  constructor(
    private readonly service: S,
    /** e.g. `coordinator at 10.0.0.5:7700`: names the peer in TLS errors. */
    what: string,
    readonly address: string,
    private readonly timeoutMs: number,
    private readonly toError: (err: ServiceError, address: string, timeoutMs: number) => Error,
  ) {
    const tls = clientTls(what, envTls());
    this.raw = new (makeGenericClientConstructor(service as never, 'CliClient'))(
      address,
      tls.credentials,
      tls.channelOptions,
    );
  }

  call<K extends keyof S & string>(name: K, req: Req<S, K>): Promise<Res<S, K>> {
    const m = this.service[name];
    return new Promise((resolve, reject) =>
      this.raw.makeUnaryRequest(
        m.path,
        m.requestSerialize as (v: unknown) => Buffer,
        m.responseDeserialize as (b: Buffer) => Res<S, K>,
        req,
        { deadline: Date.now() + this.timeoutMs },
        (err: ServiceError | null, res) =>
          err ? reject(this.toError(err, this.address, this.timeoutMs)) : resolve(res!),
      ),
    );
  }

  close(): void {
    this.raw.close();
  }
}

/** A coordinator to call: its address, and its owner id when the registry told us (instance id = owner id). */
export interface CoordinatorTarget {
  address: string;
  id?: string;
}

export class OperatorClient {
  private readonly c: CliGrpcClient<typeof CoordinatorService>;

  constructor(
    readonly target: CoordinatorTarget,
    timeoutMs: number,
  ) {
    this.c = new CliGrpcClient(
      CoordinatorService,
      `coordinator at ${target.address}`,
      target.address,
      timeoutMs,
      coordinatorError,
    );
  }

  get(xid: string): Promise<GetResponse> {
    return this.c.call('get', GetRequest.fromPartial({ xid }));
  }

  list(req: Partial<ListRequest>): Promise<ListResponse> {
    return this.c.call('list', ListRequest.fromPartial(req));
  }

  resolve(req: Partial<ResolveRequest>): Promise<ResolveResponse> {
    return this.c.call('resolve', ResolveRequest.fromPartial(req));
  }

  settleBranch(req: Partial<SettleBranchRequest>): Promise<SettleBranchResponse> {
    return this.c.call('settleBranch', SettleBranchRequest.fromPartial(req));
  }

  queryOutcome(xid: string, branchId: string): Promise<QueryOutcomeResponse> {
    return this.c.call('queryOutcome', QueryOutcomeRequest.fromPartial({ xid, branchId }));
  }

  close(): void {
    this.c.close();
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

/** The xid named by a command's first argument, and its owner; a malformed one is a usage error. */
export function xidArg(args: ParsedArgs, command: string): { xid: string; owner: string } {
  const xid = args.positionals[0];
  try {
    return { xid, owner: parseXid(xid).owner };
  } catch {
    throw new UsageError(`malformed xid '${xid}' (expected <coordinator>:<time>:<counter>)`, command);
  }
}

/** The coordinator answering for `owner`'s transactions, by COORDINATOR_FLAGS (see `ownerTarget`). */
export function owning(args: ParsedArgs, owner: string): Promise<CoordinatorTarget> {
  return ownerTarget(args.flags.coordinator as string | undefined, etcdOf(args), owner);
}

/** Runs `fn` with a client of `t` (the command's --timeout per call), closed after. */
export async function withClient<T>(
  t: CoordinatorTarget,
  args: ParsedArgs,
  fn: (c: OperatorClient) => Promise<T>,
): Promise<T> {
  const client = new OperatorClient(t, Number(args.flags.timeout));
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}
