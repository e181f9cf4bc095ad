/**
 * DMTP's public API, the package's main entry (`import … from 'dmtp'`).
 *
 * Flat: what most applications need — the transaction API (txapi/: `createDmtp`, `Participant`, resources,
 * branch stores, middleware, events), DMTP's gRPC client and server (rpc/: `client`, `startServer`, strategies,
 * metrics), the registry's main classes and shapes, the `Coordinator`, and the typed errors.
 *
 * Namespaced: every module in full, where names would collide (`registry.DEFAULTS` vs `coordinator.DEFAULTS`,
 * `events.subscribe` vs `txapi`'s `subscribe`): `registry`, `rpc`, `events`, `coordinator`, `txapi`, `proto`.
 */
export * from './common/errors';
export * from './txapi';
export * from './rpc';
export {
  EtcdRegistry,
  MemoryRegistry,
  type ChangeEvent,
  type EtcdRegistryOptions,
  type InstanceSpec,
  type Registration,
  type Registry,
  type ServiceInstance,
} from './registry';
export {
  Coordinator,
  CoordinatorMetrics,
  type CoordinatorOptions,
  type CoordinatorMetricsOptions,
} from './coordinator';
export {
  logger,
  systemClock,
  ManualClock,
  SPAN_ATTRIBUTES,
  TRACER_NAME,
  type Clock,
  type Logger,
} from './common';

export * as registry from './registry';
export * as rpc from './rpc';
export * as events from './events';
export * as coordinator from './coordinator';
export * as txapi from './txapi';
export * as proto from './proto';
