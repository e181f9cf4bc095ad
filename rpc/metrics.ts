/**
 * Prometheus metrics for services, opt-in: RPC latency per service, method and status code on both ends of a
 * call (a client and a server middleware, so the unary and the multiplexed path are counted alike), the
 * registry's live instances per service, and `serveMetrics()` — a small `/metrics` HTTP endpoint.
 *
 * Everything goes into a per-instance prom-client `Registry`, never the global one, so tests and several
 * services (or coordinators) in one process do not clash. Labels are bounded by construction: service names
 * are the ones the application calls or watches, methods come from the service definitions (a client rejects an
 * unknown method before middleware runs; a server runs middleware only for the methods it serves), codes are the
 * gRPC status names. Never an xid, an instance id or a request field. `maxMethods` is a last guard: past it, new
 * methods are counted as `other`.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { status as Status } from '@grpc/grpc-js';
import { Counter, Gauge, Histogram, Registry as PromRegistry } from 'prom-client';
import { toStatus } from '../common/errors';
import type { Registry } from '../registry/types';
import type { CallAdmission } from './admission';
import type { ClientMiddleware, ServerMiddleware } from './middleware';

export const METRICS_DEFAULTS = {
  /** Histogram buckets of every DMTP latency, in seconds: 0.5 ms to 10 s. */
  latencyBucketsSeconds: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  /** Distinct method label values per metric before new methods are counted as `other`. */
  maxMethods: 256,
  /** Interface `serveMetrics` binds. */
  host: '127.0.0.1',
  /** Path `serveMetrics` answers on (anything else is 404). */
  path: '/metrics',
};

export interface RpcMetricsOptions {
  /** Where the metrics go (default: a new Registry of their own). */
  registry?: PromRegistry;
  /** Histogram buckets in seconds (default METRICS_DEFAULTS.latencyBucketsSeconds). */
  latencyBucketsSeconds?: number[];
  /** Distinct methods per metric before `other` (default 256). */
  maxMethods?: number;
}

/** The gRPC status name of an outcome: `OK`, or the code an error travels as (`UNAVAILABLE`, `ABORTED`, …). */
export function statusName(err?: unknown): string {
  if (err === undefined) return 'OK';
  return Status[toStatus(err).code] ?? 'UNKNOWN';
}

/** Keeps a label's set of values bounded: the first `max` distinct values, then `other`. */
class BoundedLabel {
  private readonly seen = new Set<string>();
  constructor(private readonly max: number) {}
  of(value: string): string {
    if (this.seen.has(value)) return value;
    if (this.seen.size >= this.max) return 'other';
    this.seen.add(value);
    return value;
  }
}

/**
 * RPC and registry metrics of one service process. Add `clientMiddleware` to clients' `middleware`,
 * `serverMiddleware` to a server's, `trackRegistry()` for the services it calls, and `serveMetrics()`.
 */
export class RpcMetrics {
  readonly registry: PromRegistry;
  /** Client middleware: `dmtp_rpc_client_duration_seconds{service,method,code}` per call (retries included). */
  readonly clientMiddleware: ClientMiddleware;
  /** Server middleware: `dmtp_rpc_server_duration_seconds{method,code}` per handled call. */
  readonly serverMiddleware: ServerMiddleware;
  private readonly clientLatency: Histogram<'service' | 'method' | 'code'>;
  private readonly serverLatency: Histogram<'method' | 'code'>;
  private readonly instances: Gauge<'service'>;
  private readonly changes: Counter<'service' | 'type'>;
  /** The servers `trackServer` was given: their admissions, summed when scraped. */
  private readonly admissions = new Set<CallAdmission>();

  constructor(options: RpcMetricsOptions = {}) {
    this.registry = options.registry ?? new PromRegistry();
    const registers = [this.registry];
    const buckets = options.latencyBucketsSeconds ?? METRICS_DEFAULTS.latencyBucketsSeconds;
    const maxMethods = options.maxMethods ?? METRICS_DEFAULTS.maxMethods;
    this.clientLatency = new Histogram({
      name: 'dmtp_rpc_client_duration_seconds',
      help: 'Latency of DMTP client calls as the caller saw them (retries included), by registry service, full method path and gRPC status.',
      labelNames: ['service', 'method', 'code'],
      buckets,
      registers,
    });
    this.serverLatency = new Histogram({
      name: 'dmtp_rpc_server_duration_seconds',
      help: 'Time DMTP servers spent handling calls (unary and multiplexed), by full method path and gRPC status.',
      labelNames: ['method', 'code'],
      buckets,
      registers,
    });
    this.instances = new Gauge({
      name: 'dmtp_registry_instances',
      help: 'Live instances of a service in the local registry view.',
      labelNames: ['service'],
      registers,
    });
    this.changes = new Counter({
      name: 'dmtp_registry_changes_total',
      help: 'Registry watch events per service, by type (add, update, remove).',
      labelNames: ['service', 'type'],
      registers,
    });
    const admissions = this.admissions;
    const sum = (f: (a: CallAdmission) => number) => [...admissions].reduce((n, a) => n + f(a), 0);
    new Gauge({
      name: 'dmtp_rpc_server_active_calls',
      help: 'Handlers running now in the tracked servers, both call paths (what maxConcurrentCalls limits).',
      registers,
      collect() {
        this.set(sum((a) => a.active));
      },
    });
    new Counter({
      name: 'dmtp_rpc_server_refused_total',
      help: 'Calls the tracked servers refused unrun at their maxConcurrentCalls (RESOURCE_EXHAUSTED, sent elsewhere by DMTP clients).',
      registers,
      collect() {
        this.reset();
        this.inc(sum((a) => a.refusedTotal));
      },
    });
    const clientMethods = new BoundedLabel(maxMethods);
    const serverMethods = new BoundedLabel(maxMethods);
    const clientServices = new BoundedLabel(maxMethods);
    this.clientMiddleware = async (call, next) => {
      const end = this.clientLatency.startTimer({
        service: clientServices.of(call.service),
        method: clientMethods.of(call.method),
      });
      try {
        const res = await next(call);
        end({ code: 'OK' });
        return res;
      } catch (err) {
        end({ code: statusName(err) });
        throw err;
      }
    };
    this.serverMiddleware = async (call, next) => {
      const end = this.serverLatency.startTimer({ method: serverMethods.of(call.method) });
      try {
        const res = await next();
        end({ code: 'OK' });
        return res;
      } catch (err) {
        end({ code: statusName(err) });
        throw err;
      }
    };
  }

  /**
   * Keeps `dmtp_registry_instances{service}` and `dmtp_registry_changes_total` up to date for each named service
   * from the registry's watch. Returns the function that stops watching (the gauges then stay at their last value).
   */
  trackRegistry(registry: Registry, services: string[]): () => void {
    const stops = services.map((service) => {
      const live = new Set<string>();
      this.instances.set({ service }, 0);
      return registry.watch(service, (ev) => {
        this.changes.inc({ service, type: ev.type });
        if (ev.type === 'remove') live.delete(ev.instance.instanceId);
        else live.add(ev.instance.instanceId);
        this.instances.set({ service }, live.size);
      });
    });
    return () => stops.forEach((stop) => stop());
  }

  /**
   * Adds `server`'s calls to `dmtp_rpc_server_active_calls` and `dmtp_rpc_server_refused_total` (read when
   * scraped; several servers are summed).
   */
  trackServer(server: { admission: CallAdmission }): void {
    this.admissions.add(server.admission);
  }

  /** `serveMetrics(port, { registry: this.registry, ...options })`. */
  serve(port: number, options: Omit<ServeMetricsOptions, 'registry'> = {}): Promise<MetricsServer> {
    return serveMetrics(port, { ...options, registry: this.registry });
  }
}

export interface ServeMetricsOptions {
  /** What to expose (a RpcMetrics' or a CoordinatorMetrics' `registry`). */
  registry: PromRegistry;
  /** Interface to bind (default 127.0.0.1; `0.0.0.0` for a scraper on another host). */
  host?: string;
  /** Path to answer on (default `/metrics`). */
  path?: string;
}

/** A running `/metrics` endpoint. */
export interface MetricsServer {
  /** host:port it listens on. */
  readonly address: string;
  readonly port: number;
  /** Stops listening and closes open (keep-alive) connections. */
  close(): Promise<void>;
}

/** Serves `registry` in the Prometheus text format on `http://host:port/metrics` (port 0 = any free port). */
export async function serveMetrics(port: number, options: ServeMetricsOptions): Promise<MetricsServer> {
  const host = options.host ?? METRICS_DEFAULTS.host;
  const path = options.path ?? METRICS_DEFAULTS.path;
  const { registry } = options;
  const sockets = new Set<Socket>();
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const url = (req.url ?? '').split('?')[0];
    if (url !== path || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found: try GET ${path}\n`);
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`),
    );
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = (server.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;
  return {
    address: `${host}:${bound}`,
    port: bound,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
      return closing;
    },
  };
}
