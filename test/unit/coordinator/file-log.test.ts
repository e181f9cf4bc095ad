/**
 * The file transaction log on real files in a temporary folder: the TxLog contract, then what only a file has
 * (the lock, torn and corrupt lines, compaction, markers across a restart).
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { lockTextFor, ManualClock, mintXid } from '../../../common';
import { LogConflictError, LogUnavailableError } from '../../../coordinator/errors';
import { FileTxLog } from '../../../coordinator/log/file-log';
import { TxState } from '../../../proto/gen/dmtp/v1/types';
import { record, txLogContract } from '../../support/tx-log-contract';

const dirs: string[] = [];
const tmpFile = () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dmtp-file-log-'));
  dirs.push(dir);
  return path.join(dir, 'tx.log');
};
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

let file = '';
let clock = new ManualClock();
let current: FileTxLog | undefined;
txLogContract('file', {
  async make() {
    file = tmpFile();
    clock = new ManualClock();
    current = new FileTxLog({ path: file, clock, outcomeRetentionSeconds: 100 });
    return current;
  },
  async reopen() {
    await current?.close();
    current = new FileTxLog({ path: file, clock, outcomeRetentionSeconds: 100 });
    return current;
  },
  exclusive: true,
  expiry: { retentionSeconds: 100, advance: (ms) => clock.advance(ms) },
});

describe('FileTxLog', () => {
  const owner = 'file-owner';
  const open: FileTxLog[] = [];
  const make = (f: string, o: Partial<ConstructorParameters<typeof FileTxLog>[0]> = {}) => {
    const l = new FileTxLog({ path: f, ...o });
    open.push(l);
    return l;
  };
  afterEach(async () => {
    while (open.length) await open.pop()!.close();
  });

  it('keeps a second log off a file in use, and takes over the lock of a process that is gone', async () => {
    const f = tmpFile();
    const first = make(f);
    await first.create(record(mintXid(owner)));
    await assert.rejects(make(f).load(owner), /already open in this process/);
    await first.close();
    // Another live process holds it: refused, naming the process.
    writeFileSync(`${f}.lock`, lockTextFor(process.ppid));
    await assert.rejects(
      make(f).load(owner),
      (e: Error) => e instanceof LogUnavailableError && e.message.includes(String(process.ppid)),
    );
    // A dead process's lock (a kill -9) is taken over.
    const dead = spawnSync(process.execPath, [
      '-e',
      'process.stdout.write(String(process.pid))',
    ]).stdout.toString();
    writeFileSync(`${f}.lock`, lockTextFor(Number(dead)));
    const third = make(f);
    assert.equal((await third.load(owner)).length, 1);
    assert.equal(JSON.parse(readFileSync(`${f}.lock`, 'utf8')).pid, process.pid);
    await third.close();
    assert.throws(() => readFileSync(`${f}.lock`), /ENOENT/, 'close releases the lock');
  });

  it('drops a torn last line (never acknowledged), keeps the next write whole, refuses a corrupt line before it', async () => {
    const f = tmpFile();
    const l = make(f);
    const kept = mintXid(owner);
    await l.create(record(kept));
    await l.close();
    // A crash in the middle of the next write, cut where what is left still reads as a whole removal.
    appendFileSync(f, `D ${kept}`);
    const again = make(f);
    assert.deepEqual(
      (await again.load(owner)).map((r) => r.xid),
      [kept],
    );
    // The next acknowledged write after the torn one must survive the next restart, whole.
    const next = mintXid(owner);
    await again.create(record(next));
    await again.close();
    const third = make(f);
    assert.deepEqual((await third.load(owner)).map((r) => r.xid).sort(), [kept, next].sort());
    await third.close();
    writeFileSync(f, `X nonsense\n${readFileSync(f, 'utf8')}\n`);
    await assert.rejects(make(f).load(owner), /corrupt line 1/);
    assert.ok(!existsSync(`${f}.lock`), 'a log that failed to open leaves no lock behind');
  });

  it('refuses a file whose tail is no torn line of a log (a mistyped path), changing nothing', async () => {
    // Before, everything after the last newline was cut off: `--log file:/etc/app/config.json` emptied it.
    const f = tmpFile();
    writeFileSync(f, '{"port": 8080}');
    await assert.rejects(make(f).load(owner), /no line of this file cut by a crash/);
    assert.equal(readFileSync(f, 'utf8'), '{"port": 8080}');
  });

  it('refuses conflicting writes and answers a repeated one once it is durable', async () => {
    const l = make(tmpFile());
    const xid = mintXid(owner);
    await l.create(record(xid, TxState.TX_STATE_COMMITTING));
    await l.create(record(xid, TxState.TX_STATE_COMMITTING));
    await assert.rejects(l.create(record(xid, TxState.TX_STATE_PREPARING)), LogConflictError);
    await assert.rejects(l.update(record(mintXid(owner))), LogConflictError);
    await assert.rejects(l.create(record('not an xid')), /malformed xid/);
    assert.equal(l.size, 1);
  });

  it('compacts to the live records and markers, which a restart reads back; expired markers go', async () => {
    const f = tmpFile();
    const clock = new ManualClock();
    const l = make(f, { clock, compactAfterLines: 50, outcomeRetentionSeconds: 100 });
    const live = Array.from({ length: 5 }, () => mintXid(owner));
    const finished = Array.from({ length: 40 }, () => mintXid(owner));
    await Promise.all(live.map((x) => l.create(record(x))));
    await Promise.all(finished.map((x) => l.create(record(x))));
    await Promise.all(finished.map((x, i) => l.finishCommitted(x, i)));
    const expiring = mintXid(owner);
    await l.finishCommitted(expiring, 7);
    for (let i = 0; i < 3; i++) {
      const x = mintXid(owner);
      await l.create(record(x));
      await l.remove(x);
    }
    // The compaction runs beside the writes (they wait only for its last step): wait for it to be done.
    for (let i = 0; i < 500 && l.stats.compactions < 1; i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(l.stats.compactions >= 1, `no compaction after ${l.lineCount} lines`);
    assert.ok(l.lineCount <= 46, `${l.lineCount} lines after compaction`);
    await l.close();
    const lines = readFileSync(f, 'utf8').trim().split('\n');
    assert.ok(lines.length < 91, `the file still has ${lines.length} lines`);

    clock.advance(60_000);
    const again = make(f, { clock, outcomeRetentionSeconds: 100 });
    assert.deepEqual((await again.load(owner)).map((r) => r.xid).sort(), [...live].sort());
    assert.deepEqual(await again.committedMarker(finished[39]), { decidedAtMs: 39 });
    assert.deepEqual(await again.committedMarker(expiring), { decidedAtMs: 7 });
    await again.close();
    clock.advance(40_001);
    const later = make(f, { clock, outcomeRetentionSeconds: 100 });
    assert.equal(await later.committedMarker(expiring), undefined, 'past the retention');
    assert.equal((await later.load(owner)).length, 5);
  });

  it('a path that cannot be made is LogUnavailableError naming it, at once (also under /proc)', async () => {
    const f = tmpFile();
    writeFileSync(f, '');
    for (const bad of [path.join(f, 'tx.log'), '/proc/dmtp-nope/tx.log']) {
      const l = make(bad);
      await assert.rejects(
        l.load(owner),
        (e: Error) => e instanceof LogUnavailableError && e.message.includes(bad),
      );
    }
  });

  it('holds at most maxMarkers committed markers: the oldest go first, also when a restart reads them back', async () => {
    const f = tmpFile();
    const l = make(f, { maxMarkers: 5 });
    const xids = Array.from({ length: 8 }, () => mintXid(owner));
    for (const [i, x] of xids.entries()) await l.finishCommitted(x, i);
    const held = async (log: FileTxLog) =>
      (await Promise.all(xids.map((x) => log.committedMarker(x)))).map((m) => m?.decidedAtMs);
    assert.deepEqual(await held(l), [undefined, undefined, undefined, 3, 4, 5, 6, 7]);
    assert.equal(l.stats.markersDropped, 3);
    await l.close();
    const again = make(f, { maxMarkers: 4 });
    assert.deepEqual(await held(again), [undefined, undefined, undefined, undefined, 4, 5, 6, 7]);
  });

  it('is closed after close(): calls reject with LogUnavailableError', async () => {
    const l = make(tmpFile());
    await l.create(record(mintXid(owner)));
    await l.close();
    await assert.rejects(l.create(record(mintXid(owner))), LogUnavailableError);
    await assert.rejects(l.get(mintXid(owner)), LogUnavailableError);
  });
});
