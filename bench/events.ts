/**
 * `npm run bench -- events`: events/s through a DMTP consumer group next to plain kafkajs
 * (bench/events-consumer.ts), and the commit-to-consumer latency of transactional events through the real
 * coordinator's outbox relay (bench/events-commit.ts). The two parts run one after the other (never together:
 * each would disturb the other's figures on a shared machine).
 */
import { run as runCommit } from './events-commit';
import { run as runConsumer } from './events-consumer';
import type { Figures } from './results';

export async function run(): Promise<Figures> {
  const consumer = await runConsumer();
  const commit = await runCommit();
  return { ...consumer, ...commit };
}
