/** The PostgreSQL adapter's prepared-transaction ids (pure logic): PostgreSQL takes gids shorter than 200 bytes. */
import { strict as assert } from 'node:assert';
import { gidFor } from '../../../txapi/resources/pg';

describe('pg resource gids', () => {
  const xid = 'coord-1:mwyp5v64:juwv5u294';
  it('builds <prefix><xid>|<branch id>, up to 199 bytes; a 200-byte one is refused before any work', () => {
    assert.equal(gidFor('dmtp_', { xid, branchId: 'db@i1' }), `dmtp_${xid}|db@i1`);
    const room = 199 - `dmtp_${xid}|`.length;
    assert.equal(gidFor('dmtp_', { xid, branchId: 'b'.repeat(room) }).length, 199);
    assert.throws(() => gidFor('dmtp_', { xid, branchId: 'b'.repeat(room + 1) }), /makes no valid gid/);
    assert.throws(() => gidFor('dmtp_', { xid, branchId: "x'; DROP TABLE t; --" }), /makes no valid gid/);
  });
});
