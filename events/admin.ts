/**
 * Topic helpers: `ensureTopics` creates what is missing and leaves what exists alone (safe to call at every
 * start, from several processes at once); `deleteTopics` is for tests and tooling.
 */
import { createKafka, toDeliveryError, type KafkaClientOptions } from './client';
import { validateTopic } from './validation';

export interface EnsureTopicsOptions {
  /** Partitions of each created topic (existing topics are not changed). */
  partitions?: number;
  /** Replicas of each created topic; -1 = the broker's default.replication.factor. */
  replicationFactor?: number;
}

/** Creates the missing topics and waits for their leaders; answers the names it created. */
export async function ensureTopics(
  client: KafkaClientOptions,
  topics: readonly string[],
  options: EnsureTopicsOptions = {},
): Promise<string[]> {
  const wanted = [...new Set(topics)];
  wanted.forEach((t) => validateTopic(t));
  if (wanted.length === 0) return [];
  const admin = createKafka(client).admin();
  try {
    await admin.connect();
    const existing = new Set(await admin.listTopics());
    const missing = wanted.filter((t) => !existing.has(t));
    if (missing.length > 0) {
      await admin.createTopics({
        waitForLeaders: true,
        topics: missing.map((topic) => ({
          topic,
          numPartitions: options.partitions ?? 1,
          replicationFactor: options.replicationFactor ?? -1,
        })),
      });
    }
    return missing;
  } catch (err) {
    throw toDeliveryError(err, { topics: wanted.join(',') });
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

/** Deletes topics that exist (missing ones are ignored). */
export async function deleteTopics(client: KafkaClientOptions, topics: readonly string[]): Promise<void> {
  const admin = createKafka(client).admin();
  try {
    await admin.connect();
    const existing = new Set(await admin.listTopics());
    const present = topics.filter((t) => existing.has(t));
    if (present.length > 0) await admin.deleteTopics({ topics: present });
  } catch (err) {
    throw toDeliveryError(err, { topics: topics.join(',') });
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}
