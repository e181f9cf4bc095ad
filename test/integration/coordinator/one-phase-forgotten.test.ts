/**
 * End to end over real gRPC: a coordinator recovering a one-phase transaction long after it began asks its
 * branch again; the participant (the txapi SDK, file branch store) no longer knows the branch and, the
 * transaction being older than its retentionMs, answers DATA_LOSS instead of a guess. The coordinator keeps
 * asking and shows why; an operator's Resolve decides.
 */
import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { mintXid } from '../../../common';
import { Coordinator } from '../../../coordinator/coordinator';
import { MemoryTxLog } from '../../../coordinator/log/memory-log';
import { Outcome, TxState } from '../../../proto/gen/dmtp/v1/types';
import { startServer, type RpcServer } from '../../../rpc/server';
import { defineResource, FileBranchStore, Participant, participantBinding } from '../../../txapi';
import { coordinatorClient, type CoordinatorClient } from '../../support/coordinator-client';
import { waitFor } from '../../support/coordinator-wait';
import { record } from '../../support/tx-log-contract';

const ID = 'coord-forgot';

describe('one-phase Commit of a purged branch, end to end', function () {
  this.timeout(20_000);
  let dir: string;
  let participant: Participant;
  let server: RpcServer;
  let coord: Coordinator | undefined;
  let client: CoordinatorClient | undefined;

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dmtp-forgotten-'));
    participant = new Participant({
      service: 'forgetful',
      instanceId: 'f1',
      address: '127.0.0.1:0',
      store: new FileBranchStore({ path: path.join(dir, 'branches.jsonl') }),
      resources: [
        defineResource<undefined>({
          name: 'db',
          volatileWork: true,
          prepare: async () => ({ vote: 'prepared' }),
          commit: async () => ({ committed: true }),
          rollback: async () => undefined,
        }),
      ],
      retentionMs: 60 * 60_000,
    });
    await participant.start();
    server = await startServer({ services: [participantBinding(participant)], drainDelayMs: 0 });
  });
  afterEach(async () => {
    client?.close();
    await coord?.stop();
    await server.stop();
    await participant.stop();
    await fs.rm(dir, { recursive: true, force: true });
    coord = client = undefined;
  });

  for (const [decision, state] of [
    [Outcome.OUTCOME_COMMIT, TxState.TX_STATE_COMMITTED],
    [Outcome.OUTCOME_ABORT, TxState.TX_STATE_ABORTED],
  ] as const) {
    it(`is asked on and shown, never guessed, until an operator resolves it (${Outcome[decision]})`, async () => {
      const xid = mintXid(ID, Date.now() - 2 * 60 * 60_000); // began two hours ago: beyond retentionMs
      const branch = {
        branchId: participant.branchIdFor('db'),
        service: 'forgetful',
        instanceId: 'f1',
        address: server.address,
        resource: 'db',
      };
      const log = new MemoryTxLog({ unsafeForTests: true });
      const began = Date.now() - 2 * 60 * 60_000;
      await log.create(
        record(xid, TxState.TX_STATE_PREPARING, {
          branches: [branch],
          events: [],
          createdAtMs: began,
          deadlineAtMs: began + 30_000,
          decidedAtMs: 0,
          onePhase: true,
        }),
      );
      coord = new Coordinator({
        id: ID,
        log,
        manager: { phase2Backoff: { initialMs: 20, maxMs: 100, multiplier: 2 } },
      });
      client = coordinatorClient(await coord.start());
      const shown = await waitFor('the branch to answer DATA_LOSS', async () => {
        const t = (await client!.get({ xid })).transaction;
        return /may have committed and been purged/.test(t?.branches[0]?.lastError ?? '') ? t : undefined;
      });
      assert.equal(shown!.state, TxState.TX_STATE_PREPARING);
      assert.equal((await client.queryOutcome({ xid })).outcome, Outcome.OUTCOME_PENDING, 'no guess');
      assert.equal(
        await participant.store.get({ xid, branchId: branch.branchId }),
        undefined,
        'nothing recorded',
      );
      const r = await client.resolve({ xid, outcome: decision, reason: 'checked the ledger by hand' });
      assert.equal(r.state, state);
      assert.equal(
        (await client.queryOutcome({ xid })).outcome,
        decision === Outcome.OUTCOME_COMMIT ? Outcome.OUTCOME_COMMIT : Outcome.OUTCOME_ABORT,
      );
      if (decision === Outcome.OUTCOME_ABORT) {
        // The branch is told: it records the rollback (null rollback), so a late call is refused.
        const rec = await waitFor('the rollback to reach the branch', () =>
          participant.store.get({ xid, branchId: branch.branchId }),
        );
        assert.equal(rec?.status, 'rolled_back');
      }
    });
  }
});
