/**
 * The transaction API: what applications call.
 * - Initiators: `createDmtp({ coordinator | registry })`, `dmtp.transaction(async (tx) => …)`, `dmtp.begin()`,
 *   `tx.commit()/rollback()/publish()`, `dmtp.outcomeOf(xid)`; calls carry the transaction through
 *   `txClientMiddleware` (DMTP's client) or `txGrpcInterceptor` (plain grpc-js).
 * - Participants: `new Participant({ service, instanceId, address, store, resources })`, served with
 *   `participantMethods(p)` and `txServerMiddleware(p)`; resources `pgResource`, `reservationResource` or your own
 *   (`defineResource`); branch stores `FileBranchStore`, `PgBranchStore`.
 * - Events: `tx.publish` inside a transaction (published iff it commits); `createEvents({ brokers })` for plain
 *   `publish` and `subscribe` (dedupe on by default), see events.ts.
 */
export * from './errors';
export * from './outcome';
export { currentTx, runOutsideTx, type TxContext, type TxRole } from './context';
export { txClientMiddleware, txGrpcInterceptor } from './client-middleware';
export { txServerMiddleware } from './server-middleware';
export { Tx, type PublishMessage } from './tx';
export {
  createDmtp,
  Dmtp,
  DMTP_DEFAULTS,
  type BeginOptions,
  type CoordinatorTarget,
  type DmtpOptions,
  type InitiatorStats,
  type TransactionOptions,
} from './initiator';
export { InitiatorMetrics, type InitiatorMetricsOptions } from './initiator-metrics';
export { currentBranch, maybeBranch, type BranchScope } from './branch-context';
export * from './branch-store';
export { FileBranchStore, FILE_STORE_DEFAULTS, type FileBranchStoreOptions } from './branch-store-file';
export { PgBranchStore, type PgBranchStoreOptions } from './branch-store-pg';
export { surviveIdleErrors } from './pg-pool';
export {
  defineResource,
  type OnePhaseResult,
  type PrepareVote,
  type Resource,
  type RollbackInfo,
} from './resource';
export { Participant } from './participant';
export { ParticipantMetrics, type ParticipantMetricsOptions } from './metrics';
export { PARTICIPANT_DEFAULTS, type ParticipantOptions } from './participant-options';
export { coordinatorAddressOf, COORDINATOR_SERVICES } from './coordinator-routes';
export {
  participantBinding,
  participantHandlers,
  participantMethods,
  PARTICIPANT_SERVED,
} from './participant-service';
export { BRANCH_LIST_LIMITS, type BranchListPage, type BranchListQuery } from './branch-listing';
export {
  CONTEXT_LIMITS,
  readContext,
  writeContext,
  type ContextLimits,
  type WireContext,
} from './tx-metadata';
export {
  currentPg,
  gidFor,
  parseGid,
  pgResource,
  PgResource,
  PG_DEFAULTS,
  type PgResourceOptions,
} from './resources/pg';
export {
  recordReservation,
  reservationResource,
  ReservationResource,
  type ReservationBranch,
  type ReservationOptions,
} from './resources/reservation';
export {
  createEvents,
  DmtpEvents,
  subscribe,
  TXAPI_SUBSCRIBE_DEFAULTS,
  type DmtpEventsOptions,
  type DmtpSubscribeOptions,
} from './events';
export {
  consumerLag,
  EventMetrics,
  EVENT_METRICS_DEFAULTS,
  type ConsumerLag,
  type ConsumerLagOptions,
  type EventMetricsOptions,
  type PartitionLag,
  type ProducerLike,
  type ProducerStats,
  type TopicLag,
  EventTooLargeError,
  HEADERS as EVENT_HEADERS,
  InvalidTopicError,
  KafkaUnavailableError,
  NotSerialisableError,
  type DeliveryReport,
  type EventInput,
  type ReceivedEvent,
  type Subscription,
} from '../events';
