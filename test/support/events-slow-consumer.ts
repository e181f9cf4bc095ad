/**
 * A consumer in its own process, for the crash test: subscribes to argv[2] in group argv[3] and handles each
 * event slowly (argv[4] ms), printing `handled <id>` after each; `joined` once it has its partitions. The test
 * kills it with SIGKILL mid-stream.
 */
import { subscribe } from '../../events';
import { CLIENT, FAST_GROUP } from './events-kit';

async function main(): Promise<void> {
  const [topic, group, delay] = process.argv.slice(2);
  const handleMs = Number(delay ?? 20);
  const sub = await subscribe({
    ...CLIENT,
    ...FAST_GROUP,
    topics: [topic],
    group,
    fromBeginning: true,
    handler: async (e) => {
      await new Promise((r) => setTimeout(r, handleMs));
      process.stdout.write(`handled ${e.id}\n`);
    },
  });
  await sub.joined();
  process.stdout.write('joined\n');
}

main().catch((err) => {
  process.stderr.write(`slow consumer failed: ${(err as Error).stack}\n`);
  process.exit(1);
});
