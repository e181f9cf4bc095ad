/** The two-phase-commit coordinator: pure state machine and manager, transaction logs, service, relay. */
export * from './errors';
export * from './state-machine';
export * from './options';
export * from './gateway';
export * from './event-sink';
export * from './event-sink-file';
export * from './failpoints';
export * from './relay';
export * from './log/tx-log';
export * from './log/memory-log';
export * from './log/etcd-log';
export * from './manager';
export * from './participant-gateway';
export * from './service';
export * from './coordinator';
export type { Tx, TxOutcome, BranchEntry } from './tx';
export * from './event-sink-kafka';
export * from './metrics';
