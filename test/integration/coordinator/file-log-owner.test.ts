/** A lone coordinator on its file log: the file is one coordinator's, and a restart under another id is refused. */
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { mintXid } from '../../../common';
import { Coordinator } from '../../../coordinator';
import { FileTxLog } from '../../../coordinator/log/file-log';
import { TxState } from '../../../proto/gen/dmtp/v1/types';
import { record } from '../../support/tx-log-contract';

describe('coordinator on a file log', function () {
  this.timeout(20_000);
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'dmtp-file-owner-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('refuses to start under another id while the file holds unfinished transactions of its owner', async () => {
    const file = path.join(dir, 'solo.txlog');
    const before = new FileTxLog({ path: file });
    await before.create(record(mintXid('solo-a'), TxState.TX_STATE_COMMITTING, { events: [] }));
    await before.close();

    const wrong = new Coordinator({ id: 'solo-b', file: { path: file }, ha: false });
    await assert.rejects(wrong.start(), (e: Error) => {
      assert.match(
        e.message,
        /holds 1 unfinished transaction\(s\) of coordinator 'solo-a': start it with that id/,
      );
      return true;
    });
    const right = new Coordinator({ id: 'solo-a', file: { path: file }, ha: false });
    await right.start(); // the lock of the refused one was released; recovery re-drives the commit
    assert.equal(right.state, 'running');
    await right.stop();
  });
});
