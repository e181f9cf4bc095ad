// The try/confirm/cancel adapter over an in-memory "legacy system" (a fake), through the real participant and
// file branch store, with hand-built calls into the server middleware.
import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Metadata } from '@grpc/grpc-js';
import { mintXid } from '../../../common';
import type { IncomingCall } from '../../../rpc/middleware';
import {
  FileBranchStore,
  Participant,
  recordReservation,
  reservationResource,
  txServerMiddleware,
  writeContext,
} from '../../../txapi';
import { nameFor } from '../../support/env';

describe('txapi reservation adapter (fake legacy system)', () => {
  let dir: string;
  let p: Participant;
  const legacy = {
    held: new Map<string, number>(),
    confirmed: [] as string[],
    cancelled: [] as string[],
    /** The next confirm takes effect but its answer is lost (a timeout). */
    loseNextAnswer: false,
  };

  beforeEach(async function () {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), `${nameFor(this, 30)}-`));
    legacy.held.clear();
    legacy.confirmed.length = 0;
    legacy.cancelled.length = 0;
    legacy.loseNextAnswer = false;
    p = new Participant({
      service: 'hotel',
      instanceId: 'hotel-1',
      address: '127.0.0.1:6000',
      store: new FileBranchStore({ path: path.join(dir, 'b.jsonl') }),
      resources: [
        reservationResource({
          name: 'rooms',
          confirm: async (b) => {
            legacy.confirmed.push(b.data.key); // every call counted: a duplicate would show
            legacy.held.delete(b.data.key);
            if (legacy.loseNextAnswer) {
              legacy.loseNextAnswer = false;
              throw new Error('timed out (after confirming)');
            }
          },
          cancel: async (b) => {
            legacy.cancelled.push(b.data.key);
            legacy.held.delete(b.data.key);
          },
          check: async (b) => legacy.held.has(b.data.key),
        }),
      ],
      recoveryIntervalMs: 3_600_000,
    });
    await p.start();
  });
  afterEach(async () => {
    await p.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  const reserve = async (xid: string, room?: string) => {
    const md = new Metadata();
    writeContext(md, { xid, coordinatorAddress: '127.0.0.1:7000', deadlineAtMs: Date.now() + 5_000 });
    const call: IncomingCall = {
      method: '/hotel.Hotel/Reserve',
      request: {},
      metadata: md,
      deadline: Infinity,
      trailers: new Metadata(),
      signal: new AbortController().signal,
      peer: 'test',
    };
    return txServerMiddleware(p)(call, async () => {
      if (!room) return;
      const key = `${xid}/${room}`;
      await recordReservation({ key }); // recorded before reserving
      legacy.held.set(key, 1);
    });
  };
  const key = (xid: string) => ({ xid, branchId: 'rooms@hotel-1' });

  it('confirms a prepared reservation exactly once, however often commit comes', async () => {
    const xid = mintXid('c');
    await reserve(xid, '101');
    assert.deepEqual(await p.prepare(key(xid), 'rooms'), { vote: 'prepared' });
    await Promise.all([p.commit(key(xid), 'rooms', false), p.commit(key(xid), 'rooms', false)]);
    assert.deepEqual(legacy.confirmed, [`${xid}/101`]);
    assert.deepEqual(legacy.cancelled, []);
  });

  it('cancels on rollback, and a repeated rollback is a no-op', async () => {
    const xid = mintXid('c');
    await reserve(xid, '102');
    await p.prepare(key(xid), 'rooms');
    await p.rollback(key(xid), 'rooms', 'abort');
    await p.rollback(key(xid), 'rooms', 'abort again');
    assert.deepEqual(legacy.cancelled, [`${xid}/102`]);
    assert.equal(legacy.held.size, 0);
  });

  it('votes ABORT when the reservation no longer holds, and cancels nothing twice', async () => {
    const xid = mintXid('c');
    await reserve(xid, '103');
    legacy.held.clear(); // expired in the legacy system
    const vote = await p.prepare(key(xid), 'rooms');
    assert.equal(vote.vote, 'abort');
    assert.equal((await p.store.get(key(xid)))?.status, 'rolled_back');
    await p.rollback(key(xid), 'rooms', 'coordinator rollback after the ABORT vote');
    assert.deepEqual(legacy.cancelled, [`${xid}/103`]);
  });

  it('refuses the reservation call after a cancel that came first (no hanging reservation)', async () => {
    const xid = mintXid('c');
    await p.rollback(key(xid), 'rooms', 'coordinator aborted');
    await assert.rejects(reserve(xid, '104'), { name: 'BranchRolledBackError' });
    assert.equal(legacy.held.size, 0);
  });

  it('votes READ_ONLY when the call reserved nothing, and commits one-phase without a prepare', async () => {
    const ro = mintXid('c');
    await reserve(ro);
    assert.deepEqual(await p.prepare(key(ro), 'rooms'), { vote: 'read_only' });
    const one = mintXid('c');
    await reserve(one, '105');
    assert.deepEqual(await p.commit(key(one), 'rooms', true), { committed: true });
    assert.deepEqual(legacy.confirmed, [`${one}/105`]);
  });

  it('a lone branch whose confirm answer is lost is confirmed again, never cancelled', async () => {
    const one = mintXid('c');
    await reserve(one, '106');
    legacy.loseNextAnswer = true;
    await assert.rejects(p.commit(key(one), 'rooms', true), /timed out/);
    assert.equal((await p.store.get(key(one)))?.status, 'prepared');
    assert.deepEqual(await p.commit(key(one), 'rooms', true), { committed: true });
    assert.deepEqual(legacy.confirmed, [`${one}/106`, `${one}/106`], 'confirm is idempotent: asked again');
    assert.deepEqual(legacy.cancelled, [], 'a confirmed reservation is never cancelled');
  });
});
