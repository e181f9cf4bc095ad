/** What the TransactionManager is given (its dependencies) and what its begin and commit accept. */
import type { Clock } from '../common';
import type { BranchRef, StagedEvent } from '../proto/gen/dmtp/v1/types';
import type { EventSink, LifecycleSink } from './event-sink';
import type { Failpoints } from './failpoints';
import type { ParticipantGateway } from './gateway';
import type { TxLog } from './log/tx-log';
import type { ManagerOptions } from './options';

export interface ManagerDeps {
  /** This coordinator's id: the owner named in the xids it mints and accepts. */
  id: string;
  log: TxLog;
  gateway: ParticipantGateway;
  /** Where committed staged events go; without one, a Commit with events is FAILED_PRECONDITION. */
  eventSink?: EventSink;
  lifecycle?: LifecycleSink;
  clock?: Clock;
  failpoints?: Failpoints;
  options?: ManagerOptions;
  /**
   * HA: this manager runs another (failed) coordinator's transactions after a takeover. It recovers and finishes
   * what the log holds and answers queries, but starts nothing new: Begin/Enlist of an unknown xid are
   * FAILED_PRECONDITION and a Commit of an unknown xid aborts (rolling back the branches it names).
   */
  takenOver?: boolean;
}

export interface BeginOptions {
  /** A client-minted xid naming this coordinator; minted here when absent. */
  xid?: string;
  timeoutMs?: number;
  initiator?: string;
  labels?: Record<string, string>;
}

export interface CommitOptions {
  branches?: BranchRef[];
  events?: StagedEvent[];
  /** For a transaction this coordinator has not seen (a begin folded into the commit). */
  timeoutMs?: number;
  initiator?: string;
  labels?: Record<string, string>;
  /** Not a retry (CommitRequest.first_attempt): no decision can exist yet, so no committed marker is read. */
  firstAttempt?: boolean;
}

export interface RollbackOptions {
  /** Not a retry (RollbackRequest.first_attempt): no committed marker is read. */
  firstAttempt?: boolean;
}
