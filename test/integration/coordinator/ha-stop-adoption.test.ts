/**
 * A graceful stop must not leave a manager running: the HA scan goes on until ha.stop(), so an owner it takes over
 * after the managers were stopped (adoptions.stopManagers) got a manager nobody stopped, still driving phase 2
 * after stop() returned. The window is widened here by holding teardown right after stopManagers until the orphan
 * is taken over (or 3 s pass: with the scan stopped first, it never is).
 */
import { strict as assert } from 'node:assert';
import { mintXid } from '../../../common';
import { haKeys } from '../../../coordinator/ha';
import { EtcdTxLog } from '../../../coordinator/log/etcd-log';
import type { TransactionManager } from '../../../coordinator/manager';
import { TxState } from '../../../proto/gen/dmtp/v1/types';
import { branch, FakeGateway } from '../../support/coordinator-fake-gateway';
import { inProcessHa } from '../../support/ha-in-process';

describe('coordinator HA: no takeover during a graceful stop', function () {
  this.timeout(30_000);
  const ha = inProcessHa();

  it('takes over no owner once its managers are stopped', async () => {
    const gw = new FakeGateway();
    gw.set('a', { failPhase2: 1_000_000 }); // the orphan's COMMITTING transaction is never acknowledged
    const c = await ha.start('stopping', gw);
    const ghostLog = new EtcdTxLog({ client: ha.etcd, prefix: ha.prefix });
    const x = mintXid('ghost', Date.now());
    const now = Date.now();
    await ghostLog.create({
      xid: x,
      state: TxState.TX_STATE_COMMITTING,
      branches: [branch('a')],
      events: [],
      createdAtMs: now,
      deadlineAtMs: now + 30_000,
      decidedAtMs: now,
      initiator: '',
      labels: {},
      abortReason: '',
    });
    await ghostLog.close();
    let adopted: TransactionManager | undefined;
    c.on('adopted', (owner: string) => owner === 'ghost' && (adopted = c.adoptions.managerOf('ghost')));
    const stopManagers = c.adoptions.stopManagers.bind(c.adoptions);
    c.adoptions.stopManagers = async () => {
      await stopManagers();
      // 'ghost' crashed just now: its member key stays, its lock went with its lease.
      await ha.etcd.put(haKeys.member(ha.prefix, 'ghost')).value('ghost');
      for (let i = 0; i < 30 && !adopted; i++) await new Promise((r) => setTimeout(r, 100));
    };
    await c.stop();
    const calls = gw.callsFor(x).length;
    await new Promise((r) => setTimeout(r, 1_000));
    const stopped = (adopted as unknown as { stopped?: boolean } | undefined)?.stopped;
    assert.ok(
      adopted === undefined || stopped,
      `a manager of 'ghost' was left running (stopped: ${stopped})`,
    );
    assert.equal(gw.callsFor(x).length, calls, 'no phase-2 call after stop() returned');
  });
});
