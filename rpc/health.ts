/**
 * The standard gRPC health checking protocol (`grpc.health.v1.Health`, proto/grpc/health/v1/health.proto) for
 * DMTP's servers and the coordinator, so Kubernetes gRPC probes, grpc_health_probe and load balancers can ask
 * them. One `HealthReporter` per server holds a status per service name ("" is the server as a whole):
 *
 * - Check answers the status, or NOT_FOUND for a name the server never reported;
 * - Watch sends the status at once (SERVICE_UNKNOWN for an unknown name), then every change, until the caller
 *   ends the call or the server shuts down (`endWatches()`: a long-lived stream would otherwise hold a graceful
 *   shutdown until it is forced).
 *
 * Servers report NOT_SERVING before they bind, SERVING once they serve, and NOT_SERVING again as the first step
 * of stopping (before deregistering and draining), so a prober stops sending work before the server leaves.
 * An application may report its own names or override a status (`server.health.set('inventory', 'NOT_SERVING')`
 * while its database is down).
 */
import {
  makeGenericClientConstructor,
  status as Status,
  type sendUnaryData,
  type ServiceError,
  type ServerUnaryCall,
  type ServerWritableStream,
} from '@grpc/grpc-js';
import {
  HealthCheckResponse_ServingStatus as Wire,
  HealthService,
  type HealthCheckRequest,
  type HealthCheckResponse,
  type HealthServer,
} from '../proto/gen/grpc/health/v1/health';
import { clientTls, type TlsOptions } from './tls';

export { HealthService };

export type ServingStatus = 'SERVING' | 'NOT_SERVING';

/** The longest service name a Check or Watch may ask about (names are registry names or full gRPC names). */
const MAX_NAME = 256;

type Watch = ServerWritableStream<HealthCheckRequest, HealthCheckResponse>;

export class HealthReporter {
  private readonly statuses = new Map<string, ServingStatus>();
  private readonly watches = new Map<string, Set<Watch>>();
  private readonly listeners = new Set<(service: string, status: ServingStatus) => void>();
  private ended = false;

  /** Reports `status` for `service` ("" for the server as a whole); watchers of the name hear of a change. */
  set(service: string, status: ServingStatus): void {
    if (this.statuses.get(service) === status) return;
    this.statuses.set(service, status);
    for (const w of this.watches.get(service) ?? []) w.write({ status: Wire[status] });
    for (const l of this.listeners) l(service, status);
  }

  /** Calls `listener` after each change of a status, in this process. Returns the function that stops it. */
  onChange(listener: (service: string, status: ServingStatus) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Reports `status` for every name reported so far. */
  setAll(status: ServingStatus): void {
    for (const name of [...this.statuses.keys()]) this.set(name, status);
  }

  /** The status reported for `service`, undefined for a name never reported. */
  get(service: string): ServingStatus | undefined {
    return this.statuses.get(service);
  }

  /** Ends every Watch call (OK) and refuses new ones (UNAVAILABLE): the server is shutting down. */
  endWatches(): void {
    this.ended = true;
    for (const set of this.watches.values()) for (const w of set) w.end();
    this.watches.clear();
  }

  /** The grpc-js implementation to add with `server.addService(HealthService, reporter.implementation())`. */
  implementation(): HealthServer {
    return {
      check: (
        call: ServerUnaryCall<HealthCheckRequest, HealthCheckResponse>,
        done: sendUnaryData<HealthCheckResponse>,
      ) => {
        const service = call.request.service;
        const bad = badName(service);
        if (bad) return done({ code: Status.INVALID_ARGUMENT, details: bad });
        const status = this.statuses.get(service);
        if (!status) return done({ code: Status.NOT_FOUND, details: `unknown service '${service}'` });
        done(null, { status: Wire[status] });
      },
      watch: (call: Watch) => {
        const service = call.request.service;
        const bad = badName(service);
        // grpc-js sends a stream's status for an emitted 'error' (destroy() would end it with none at all).
        if (bad) return void call.emit('error', { code: Status.INVALID_ARGUMENT, details: bad });
        if (this.ended) {
          return void call.emit('error', { code: Status.UNAVAILABLE, details: 'server is shutting down' });
        }
        let set = this.watches.get(service);
        if (!set) this.watches.set(service, (set = new Set()));
        set.add(call);
        const forget = () => {
          set.delete(call);
          if (set.size === 0 && this.watches.get(service) === set) this.watches.delete(service);
        };
        call.once('cancelled', forget);
        call.once('close', forget);
        call.on('error', forget); // a write racing the caller's cancel: forget it, never an unhandled 'error'
        const status = this.statuses.get(service);
        call.write({ status: status ? Wire[status] : Wire.SERVICE_UNKNOWN });
      },
    };
  }
}

function badName(service: unknown): string | undefined {
  if (typeof service !== 'string') return 'service must be a string';
  if (service.length > MAX_NAME) return `service name longer than ${MAX_NAME} characters`;
  return undefined;
}

/**
 * What `checkHealth` found: the status the server reported, or why there is none — NOT_FOUND (it does not know
 * the name), UNIMPLEMENTED (it does not serve the health protocol), UNREACHABLE (no connection, or no answer
 * before the deadline).
 */
export type HealthAnswer =
  'SERVING' | 'NOT_SERVING' | 'UNKNOWN' | 'NOT_FOUND' | 'UNIMPLEMENTED' | 'UNREACHABLE';

const HealthClient = makeGenericClientConstructor(HealthService, 'grpc.health.v1.Health');
const ANSWERS: Partial<Record<Wire, HealthAnswer>> = {
  [Wire.SERVING]: 'SERVING',
  [Wire.NOT_SERVING]: 'NOT_SERVING',
};

/** Asks one server's health (Check) for `service` ("" for the whole server), within `timeoutMs` (over `tls` when given). */
export function checkHealth(
  address: string,
  service = '',
  timeoutMs = 2_000,
  tls?: TlsOptions,
): Promise<HealthAnswer> {
  const t = clientTls(`health check of ${address}`, tls);
  const client = new HealthClient(address, t.credentials, t.channelOptions);
  return new Promise<HealthAnswer>((resolve) => {
    client.makeUnaryRequest(
      HealthService.check.path,
      HealthService.check.requestSerialize,
      HealthService.check.responseDeserialize,
      { service },
      { deadline: Date.now() + timeoutMs },
      (err: ServiceError | null, res?: HealthCheckResponse) => {
        client.close();
        if (!err) return resolve(ANSWERS[res!.status] ?? 'UNKNOWN');
        if (err.code === Status.NOT_FOUND) return resolve('NOT_FOUND');
        if (err.code === Status.UNIMPLEMENTED) return resolve('UNIMPLEMENTED');
        resolve('UNREACHABLE');
      },
    );
  });
}
