/** AddressTransports' options and idle sweep, on a manual clock (a connection attempt to a port nobody listens on). */
import { strict as assert } from 'node:assert';
import { Metadata } from '@grpc/grpc-js';
import { InvalidArgumentError, ManualClock } from '../../../common';
import { AddressTransports, ADDRESS_TRANSPORTS_DEFAULTS } from '../../../rpc/address-transports';

const DEAD = '127.0.0.1:1';

const callDead = (t: AddressTransports) =>
  t.invoke(DEAD, {
    method: '/x.Y/Z',
    request: Buffer.alloc(0),
    metadata: new Metadata(),
    deadline: Date.now() + 2_000,
  });

async function callOnce(t: AddressTransports): Promise<void> {
  await assert.rejects(callDead(t), { code: 14 });
}

describe('rpc AddressTransports', () => {
  it('an idleCloseMs given as undefined keeps the default: the address is closed after 60 s idle, not never', async () => {
    // Before, `{ idleCloseMs: undefined }` (what CoordinatorClients passes when not told) replaced the default: the
    // sweep ran every millisecond for good and closed nothing.
    const clock = new ManualClock();
    const t = new AddressTransports({ idleCloseMs: undefined, clock });
    try {
      await callOnce(t);
      assert.equal(t.size, 1);
      clock.advance(ADDRESS_TRANSPORTS_DEFAULTS.idleCloseMs - 1_000);
      assert.equal(t.size, 1, 'kept while not idle for idleCloseMs');
      clock.advance(ADDRESS_TRANSPORTS_DEFAULTS.idleCloseMs + 1_000);
      assert.equal(t.size, 0, 'closed once idle for idleCloseMs');
    } finally {
      t.close();
    }
  });

  it('once closed, refuses calls unsent and opens nothing (it would never be closed again)', async () => {
    const t = new AddressTransports({ clock: new ManualClock() });
    t.close();
    await assert.rejects(
      callDead(t),
      (e: Error & { code?: number; details?: { notSent?: boolean } }) =>
        e.code === 14 && e.details?.notSent === true,
    );
    assert.equal(t.size, 0);
  });

  it('refuses an idleCloseMs that is not a usable timer', () => {
    for (const bad of [0, -1, Number.NaN, 2 ** 31]) {
      assert.throws(
        () => new AddressTransports({ idleCloseMs: bad }),
        (e: Error) => {
          assert.ok(e instanceof InvalidArgumentError);
          assert.match(e.message, /idleCloseMs .* is out of range/);
          return true;
        },
      );
    }
  });
});
