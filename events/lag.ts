/**
 * How far a consumer group is behind: per partition, the end of the log (the offset the next event will get)
 * minus the group's committed offset. A partition where the group has committed nothing yet, or whose committed
 * offset retention has already deleted, counts from the oldest event still kept: those events are all ahead of
 * the group. `Subscription.lag()` asks this for its own group and topics; `EventMetrics` exports it.
 *
 * One admin connection per call, closed before it returns: nothing to stop, and a dead Kafka fails the call
 * (KafkaUnavailableError, after the client's retries) instead of leaving a connection behind.
 */
import type { Admin } from 'kafkajs';
import { InvalidArgumentError, NotFoundError } from '../common';
import { clientOptions, createKafka, type KafkaClientOptions } from './client';
import { KafkaUnavailableError } from './errors';
import { validateTopic } from './validation';

export interface PartitionLag {
  partition: number;
  /** The group's committed offset (the next event it will read), or null when it has committed none. */
  committed: number | null;
  /** The offset the next event published to the partition will get. */
  end: number;
  /** Events of the partition the group has not committed. */
  lag: number;
}

export interface TopicLag {
  topic: string;
  /** The sum over its partitions. */
  lag: number;
  partitions: PartitionLag[];
}

export interface ConsumerLag {
  group: string;
  /** The sum over its topics. */
  lag: number;
  topics: TopicLag[];
}

export interface ConsumerLagOptions extends KafkaClientOptions {
  group: string;
  topics: readonly string[];
}

/**
 * The group's lag on each topic. NotFoundError names a topic that does not exist; KafkaUnavailableError says
 * Kafka could not be asked (with the group in its details).
 */
export async function consumerLag(options: ConsumerLagOptions): Promise<ConsumerLag> {
  const { group, topics } = options;
  if (typeof group !== 'string' || group.length === 0)
    throw new InvalidArgumentError('consumerLag: no group');
  if (!Array.isArray(topics) || topics.length === 0) throw new InvalidArgumentError('consumerLag: no topics');
  topics.forEach((t) => validateTopic(t));
  const admin: Admin = createKafka(clientOptions(options)).admin();
  try {
    await admin.connect();
    const existing = new Set(await admin.listTopics());
    const missing = topics.find((t) => !existing.has(t));
    if (missing !== undefined) {
      throw new NotFoundError(`consumer lag of group ${group}: topic '${missing}' does not exist`, {
        details: { group, topic: missing },
      });
    }
    const committed = await admin.fetchOffsets({ groupId: group, topics: [...topics] });
    const result: ConsumerLag = { group, lag: 0, topics: [] };
    for (const topic of topics) {
      const stored = committed.find((c) => c.topic === topic)?.partitions ?? [];
      const t: TopicLag = { topic, lag: 0, partitions: [] };
      for (const p of await admin.fetchTopicOffsets(topic)) {
        const kept = stored.find((s) => s.partition === p.partition)?.offset;
        const at = kept === undefined || kept === '-1' ? null : Number(kept);
        const [low, end] = [Number(p.low), Number(p.high)];
        const lag = Math.max(0, end - Math.max(at ?? low, low));
        t.partitions.push({ partition: p.partition, committed: at, end, lag });
        t.lag += lag;
      }
      t.partitions.sort((a, b) => a.partition - b.partition);
      result.topics.push(t);
      result.lag += t.lag;
    }
    return result;
  } catch (err) {
    if (err instanceof NotFoundError) throw err;
    throw new KafkaUnavailableError(
      `consumer lag of group ${group}: Kafka did not answer: ${(err as Error)?.message ?? String(err)}`,
      { details: { group }, cause: err },
    );
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}
