/**
 * Reads a whole Kafka topic, from the oldest event to the end it has now (the high watermark of every
 * partition), for the demo's checks: what was really published, not what anybody says was.
 */
import { createKafka, ReceivedEvent } from '../../events';

export async function readTopic(
  brokers: string[],
  topic: string,
  withinMs = 30_000,
): Promise<ReceivedEvent[]> {
  const kafka = createKafka({ brokers, clientId: 'dmtp-demo-check' });
  const admin = kafka.admin();
  await admin.connect();
  let ends: Map<number, bigint>;
  try {
    const offsets = await admin.fetchTopicOffsets(topic);
    ends = new Map(offsets.map((o) => [o.partition, BigInt(o.high)]));
  } finally {
    await admin.disconnect();
  }
  const events: ReceivedEvent[] = [];
  const next = new Map<number, bigint>([...ends.keys()].map((p) => [p, 0n]));
  const done = () => [...ends].every(([p, high]) => next.get(p)! >= high);
  if (done()) return events;
  const consumer = kafka.consumer({ groupId: `dmtp-demo-check-${Date.now().toString(36)}` });
  await consumer.connect();
  try {
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`could not read ${topic} to its end within ${withinMs} ms`)),
        withinMs,
      );
      consumer
        .run({
          eachMessage: async ({ partition, message }) => {
            events.push(new ReceivedEvent(topic, partition, message));
            next.set(partition, BigInt(message.offset) + 1n);
            if (done()) {
              clearTimeout(timer);
              resolve();
            }
          },
        })
        .catch(reject);
    });
  } finally {
    await consumer.disconnect();
  }
  return events;
}
