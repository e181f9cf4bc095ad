/**
 * A process that churns branches through a FileBranchStore as a participant would, for the store's kill -9
 * test: small segments (so they roll, are written again and deleted all the time), a short retention (purged
 * every 100 ms), some branches left prepared for ever (in doubt: they hold old segments until written again).
 * Every change is printed as `A <xid> <branchId> <status>` once `transition()` resolved (durable); stdout is a
 * pipe, written synchronously on Linux, so what the test read was acknowledged before the kill.
 *
 * `node --import tsx test/support/branch-store-file-child.ts` with BSF_FILE, BSF_SEGMENT_LINES, BSF_RETENTION_MS,
 * BSF_TAG (names this run's branches apart from earlier runs').
 */
import { mintXid } from '../../common';
import { FileBranchStore, type BranchKey, type BranchStatus } from '../../txapi';

const file = process.env.BSF_FILE!;
const segmentLines = Number(process.env.BSF_SEGMENT_LINES ?? 50);
const retentionMs = Number(process.env.BSF_RETENTION_MS ?? 200);
const tag = process.env.BSF_TAG ?? 'x';

async function main(): Promise<void> {
  const store = new FileBranchStore({ path: file, segmentLines });
  await store.open();
  const ack = (key: BranchKey, status: BranchStatus) =>
    process.stdout.write(`A ${key.xid} ${key.branchId} ${status}\n`);
  setInterval(() => {
    store.purge(Date.now() - retentionMs).catch((err: Error) => {
      process.stderr.write(`purge failed: ${err.message}\n`);
      process.exit(2);
    });
  }, 100);
  let n = 0;
  const worker = async (w: number) => {
    for (;;) {
      const key = { xid: mintXid('bsf'), branchId: `db@${tag}-${w}-${n++}` };
      const lazy = n % 2 === 0;
      await store.transition(key, 'registered', { resource: 'db' }, { lazy });
      if (!lazy) ack(key, 'registered');
      if (n % 7 === 0) {
        await store.setData(key, { reservation: `r-${n}` });
        ack(key, 'registered');
      }
      await store.transition(key, 'prepared');
      ack(key, 'prepared');
      if (n % 25 === 0) continue; // in doubt for good
      const end: BranchStatus = n % 10 === 0 ? 'rolled_back' : 'committed';
      await store.transition(key, end, { reason: end === 'rolled_back' ? 'voted abort' : undefined });
      ack(key, end);
    }
  };
  process.stdout.write('ready\n');
  await Promise.all(Array.from({ length: 8 }, (_, w) => worker(w)));
}

main().catch((err: Error) => {
  process.stderr.write(`branch store child failed: ${err.stack}\n`);
  process.exit(1);
});
