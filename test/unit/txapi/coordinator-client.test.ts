/** CoordinatorClients' upkeep per coordinator address (a real connection attempt to a port nobody listens on). */
import { strict as assert } from 'node:assert';
import { mintXid } from '../../../common';
import { CoordinatorClients } from '../../../txapi/coordinator-client';

describe('txapi CoordinatorClients', () => {
  it('forgets what it keeps for an address once nothing has called or asked about it for idleCloseMs', async () => {
    // Before, a stream, a client and a health entry stayed for every coordinator address ever called: a
    // long-lived initiator or participant collected one per coordinator that came back on a new address.
    const clients = new CoordinatorClients({ idleCloseMs: 50 });
    const dead = '127.0.0.1:1';
    try {
      await assert.rejects(clients.queryOutcome(dead, mintXid('c'), 'b', 2_000), { code: 14 });
      assert.equal(clients.addresses, 1);
      assert.equal(clients.isDown(dead), true, 'left out after a failed call');
      // While it is still asked about (a registered coordinator that pickers keep skipping), it stays known as down.
      for (let i = 0; i < 8; i++) {
        await new Promise((r) => setTimeout(r, 25));
        assert.equal(clients.isDown(dead), true, `forgotten while still asked about (${i})`);
      }
      assert.equal(clients.addresses, 1);
      // No longer asked about (it left the registry): forgotten.
      for (let i = 0; i < 100 && clients.addresses > 0; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(clients.addresses, 0);
      assert.equal(clients.isDown(dead), false, 'forgotten, health too');
    } finally {
      clients.close();
    }
  });
});
