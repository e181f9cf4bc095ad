/**
 * An HA member (real etcd) that wins a failed owner's lock while it is not serving yet writes that owner's route
 * once it serves, even when serve() ran while the winning write was on its way to etcd. Before, that write
 * (built without an address) deleted the route, serve() skipped the owner (not held yet), and nothing wrote the
 * route again: participants and `outcomeOf` could not find who answered for the owner's xids.
 */
import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { haKeys, HaMember, type HaHooks } from '../../../coordinator/ha';
import { waitFor } from '../../support/coordinator-wait';
import { ETCD_ENDPOINTS, nameFor } from '../../support/env';

describe('coordinator HA: the route of an owner won while serve() runs', function () {
  this.timeout(20_000);
  let prefix: string;
  let etcd: Etcd3;
  let member: HaMember | undefined;

  beforeEach(function () {
    prefix = `/dmtp-test/${nameFor(this)}`;
    etcd = new Etcd3({ hosts: ETCD_ENDPOINTS });
  });
  afterEach(async () => {
    await member?.stop(async () => false);
    member = undefined;
    await etcd.delete().prefix(prefix);
    etcd.close();
  });

  it('is written once serving, although the winning write went out without it', async () => {
    await etcd.put(haKeys.member(prefix, 'dead')).value('dead'); // a failed owner: member key, no lock
    const client = new Etcd3({ hosts: ETCD_ENDPOINTS });
    // Hold the answer of the write that wins 'dead' until serve() has run.
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => (release = r));
    let caught = false;
    const txn = client.kv.txn.bind(client.kv);
    client.kv.txn = (async (...args: Parameters<typeof txn>) => {
      const res = await txn(...args);
      const deadLock = haKeys.lock(prefix, 'dead');
      if (!caught && args[0].compare?.some((c) => String(c.key) === deadLock)) {
        caught = true;
        await held;
      }
      return res;
    }) as typeof txn;
    const adopted: string[] = [];
    const hooks: HaHooks = {
      adopt: async (owner) => void adopted.push(owner),
      drop: () => undefined,
      idle: () => true,
      release: async () => undefined,
      finished: async () => false,
      stepDown: () => undefined,
    };
    member = new HaMember(client, prefix, 'taker', hooks, { leaseTtlSeconds: 2, scanIntervalMs: 100 });
    try {
      await member.start();
      await waitFor('the winning write is on its way', () => caught);
      await member.serve('127.0.0.1:7777');
      release();
      await waitFor('taker adopts dead', () => adopted.includes('dead'));
      const route = await etcd.get(haKeys.route(prefix, 'dead')).string();
      assert.ok(route, 'the route of dead is written');
      assert.equal(JSON.parse(route).address, '127.0.0.1:7777');
    } finally {
      release();
      await member.stop(async () => false);
      member = undefined;
      client.close();
    }
  });
});
