/** CoordinatorClients' upkeep per coordinator address (a real connection attempt to a port nobody listens on). */
import { strict as assert } from 'node:assert';
import { mintXid } from '../../../common';
import { CoordinatorClients } from '../../../txapi/coordinator-client';

describe('txapi CoordinatorClients', () => {
  it('forgets what it keeps for an address once no call has gone there for idleCloseMs', async () => {
    // Before, a stream, a client and a health entry stayed for every coordinator address ever called: a
    // long-lived initiator or participant collected one per coordinator that came back on a new address.
    const clients = new CoordinatorClients({ idleCloseMs: 50 });
    const dead = '127.0.0.1:1';
    try {
      await assert.rejects(clients.queryOutcome(dead, mintXid('c'), 'b', 2_000), { code: 14 });
      assert.equal(clients.addresses, 1);
      assert.equal(clients.isDown(dead), true, 'left out after a failed call');
      for (let i = 0; i < 100 && clients.addresses > 0; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(clients.addresses, 0);
      assert.equal(clients.isDown(dead), false, 'forgotten, health too');
    } finally {
      clients.close();
    }
  });
});
