// outcomeOf against a real coordinator (in this process, on a file log), for transactions it never heard of
// because they committed with nothing to commit.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Coordinator } from '../../../coordinator';
import { createDmtp, type Dmtp } from '../../../txapi';

describe('txapi outcomeOf: a transaction committed with no branch and no event', function () {
  this.timeout(20_000);
  let dir: string;
  let coord: Coordinator;
  let dmtp: Dmtp;
  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'dmtp-outcome-local-'));
    coord = new Coordinator({ id: 'outcome-local', file: { path: path.join(dir, 'tx.log') }, ha: false });
    const address = await coord.start();
    dmtp = createDmtp({ coordinator: { id: 'outcome-local', address } });
  });
  after(async () => {
    dmtp.close();
    await coord.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers committed, as transaction() did, not the coordinator presumed abort', async () => {
    // Before, the coordinator was asked: it had never heard of the xid, answered aborted and recorded that.
    let xid = '';
    assert.equal(await dmtp.transaction(async (tx) => ((xid = tx.xid), 'done')), 'done');
    assert.deepEqual(await dmtp.outcomeOf(xid), { status: 'committed' });
  });

  it('still asks the coordinator for a transaction it did not commit here', async () => {
    const other = createDmtp({ coordinator: { id: 'outcome-local', address: coord.address } });
    try {
      const tx = await other.begin();
      await tx.commit();
      // Another Dmtp (another process) never saw that commit: the coordinator answers, presumed abort.
      assert.deepEqual(await dmtp.outcomeOf(tx.xid), {
        status: 'aborted',
        reason: 'aborted (as the coordinator reports)',
      });
    } finally {
      other.close();
    }
  });
});
