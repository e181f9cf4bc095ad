/**
 * `npm run bench -- events`: events/s through a DMTP consumer group next to plain kafkajs
 * (bench/events-consumer.ts).
 */
import { run as runConsumer } from './events-consumer';
import type { Figures } from './results';

export async function run(): Promise<Figures> {
  return { ...(await runConsumer()) };
}
