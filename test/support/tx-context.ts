/** An initiator's transaction context, as `begin()` makes one, for unit tests that run calls inside it. */
import { mintXid } from '../../common';
import type { TxContext } from '../../txapi/context';

export function initiatorContext(): TxContext {
  return {
    xid: mintXid('coord-1'),
    coordinatorAddress: '127.0.0.1:7000',
    deadlineAtMs: Date.now() + 10_000,
    role: 'initiator',
    branches: [],
    events: [],
    active: true,
  };
}
