/**
 * A process that churns branches through a FileBranchStore as a participant would, for the store's kill -9
 * test: small segments (so they roll, are written again and deleted all the time), a short retention (purged
 * every 100 ms), some branches left prepared for ever (in doubt: they hold old segments until written again).
 * Every change is printed as `A <xid> <branchId> <status> <updatedAtMs>` once `transition()` resolved (durable),
 * and every purge as `P <beforeMs>` before it starts; stdout is a pipe, written synchronously on Linux, so what
 * the test read was acknowledged (or asked for) before the kill.
 *
 * `node --import tsx test/support/branch-store-file-child.ts` with BSF_FILE, BSF_SEGMENT_LINES, BSF_RETENTION_MS,
 * BSF_TAG (names this run's branches apart from earlier runs').
 */
import { mintXid } from '../../common';
import { FileBranchStore, type BranchKey, type BranchRecord, type BranchStatus } from '../../txapi';

const file = process.env.BSF_FILE!;
const segmentLines = Number(process.env.BSF_SEGMENT_LINES ?? 50);
const retentionMs = Number(process.env.BSF_RETENTION_MS ?? 200);
const tag = process.env.BSF_TAG ?? 'x';

async function main(): Promise<void> {
  const store = new FileBranchStore({ path: file, segmentLines });
  await store.open();
  const ack = (key: BranchKey, r: { record: BranchRecord }) =>
    process.stdout.write(`A ${key.xid} ${key.branchId} ${r.record.status} ${r.record.updatedAtMs}\n`);
  setInterval(() => {
    // Announced before it starts: the test allows a final branch to be missing only if a purge this old ran.
    const beforeMs = Date.now() - retentionMs;
    process.stdout.write(`P ${beforeMs}\n`);
    store.purge(beforeMs).catch((err: Error) => {
      process.stderr.write(`purge failed: ${err.message}\n`);
      process.exit(2);
    });
  }, 100);
  let n = 0;
  const worker = async (w: number) => {
    for (;;) {
      const i = n++;
      const key = { xid: mintXid('bsf'), branchId: `db@${tag}-${w}-${i}` };
      const lazy = i % 2 === 0;
      const registered = await store.transition(key, 'registered', { resource: 'db' }, { lazy });
      if (!lazy) ack(key, registered);
      if (i % 7 === 0) {
        ack(key, { record: await store.setData(key, { reservation: `r-${i}` }) });
      }
      ack(key, await store.transition(key, 'prepared'));
      if (i % 25 === 0) continue; // in doubt for good
      const end: BranchStatus = i % 10 === 0 ? 'rolled_back' : 'committed';
      ack(
        key,
        await store.transition(key, end, { reason: end === 'rolled_back' ? 'voted abort' : undefined }),
      );
    }
  };
  process.stdout.write('ready\n');
  await Promise.all(Array.from({ length: 8 }, (_, w) => worker(w)));
}

main().catch((err: Error) => {
  process.stderr.write(`branch store child failed: ${err.stack}\n`);
  process.exit(1);
});
