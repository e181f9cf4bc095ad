/** etcd ranges over a key prefix, for the log, its markers and HA's owner keys (the registry's helper). */
export { prefixEnd } from '../../registry';
