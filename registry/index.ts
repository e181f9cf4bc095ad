/**
 * The service registry: instances register on etcd leases and are discovered by prefix read + watch into a
 * local cache. `EtcdRegistry` is the implementation; `MemoryRegistry` is for unit tests only.
 */
export * from './types';
export { EtcdRegistry, DEFAULTS, compileOptions } from './etcd-registry';
export type { EtcdRegistryOptions, EtcdRegistryConfig } from './etcd-registry';
export { EtcdRegistration } from './etcd-registration';
export {
  etcdCallDeadline,
  etcdChannelOptions,
  etcdFaultHandling,
  etcdSecurityFromEnv,
  describeEtcdSecurity,
  etcdUnreachable,
  isEtcdError,
  ETCD_CHANNEL_DEFAULTS,
} from './etcd-channel';
export type { EtcdChannelOptions, EtcdSecurity } from './etcd-channel';
export type { RegistrationState } from './etcd-registration';
export { MemoryRegistry, MemoryStore } from './memory-registry';
export type { MemoryRegistryOptions } from './memory-registry';
export type { ChangeListener } from './service-view';
export { sameInstance, takesCalls } from './service-view';
export { instanceAddress } from './instance-address';
export { readPrefix, prefixEnd, PAGE_KEYS } from './etcd-range';
export type { PageLimit } from './etcd-range';
export {
  MAX_NAME_LENGTH,
  MAX_VALUE_BYTES,
  validateServiceName,
  validateInstanceId,
  validateSpec,
  updatedInstance,
  encodeInstance,
  decodeInstance,
  ValueDecoder,
} from './validate';
export { instanceKey, servicePrefix, servicesPrefix, parseInstanceKey } from './keys';
