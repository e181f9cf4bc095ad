/**
 * DMTP calls between services: the server and client helpers, the load-balancing strategies, the unary
 * transport, middleware, the gRPC health protocol, and the `dmtp:///` resolver for plain grpc-js users.
 */
export * from './middleware';
export * from './metrics';
export {
  MAX_MESSAGE_BYTES,
  errorTrailers,
  type Transport,
  type TransportCall,
  type TransportResult,
} from './transport';
export * from './strategies';
export { currentCall, inheritedDeadline, bindCallContext } from './call-context';
export { RetryBudget, type RetryBudgetOptions } from './retry-budget';
export { OutlierDetector, type OutlierEjectionOptions } from './outlier-ejection';
export { UnaryTransport, type UnaryTransportOptions } from './transport-unary';
export { answeredByServer, isNotSent, NOT_RUN_TRAILER } from './not-sent';
export { CallAdmission } from './admission';
export {
  RpcServer,
  startServer,
  DEFAULTS as SERVER_DEFAULTS,
  type ServerOptions,
  type ServiceBinding,
  type Handlers,
  type ServiceDefinitionLike,
  type RequestOf,
  type ResponseOf,
} from './server';
export {
  client,
  ServiceClient,
  DEFAULTS as CLIENT_DEFAULTS,
  type ClientOptions,
  type CallOptions,
  type RpcClient,
  type ServiceMethods,
} from './client';
export { serviceBinding } from './service-binding';
export { clientTls, readTlsFiles, serverCredentials, tlsFromEnv, type TlsOptions } from './tls';
export { checkHealth, HealthReporter, HealthService, type HealthAnswer, type ServingStatus } from './health';
export { setupDmtpResolver, endpointOf, DEFAULT_SERVICE_CONFIG } from './resolver-dmtp';
export {
  createMuxService,
  muxServiceDefinition,
  MuxTransport,
  DEFAULTS as MUX_DEFAULTS,
  MUX_METADATA_KEY,
  MUX_METADATA_VALUE,
  type MuxServiceImpl,
  type MuxServiceOptions,
  type MuxTransportOptions,
} from './mux';
export {
  clientSpan,
  serverSpan,
  traceUnaryService,
  tracingClientMiddleware,
  tracingServerMiddleware,
} from './tracing';
