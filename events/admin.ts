/**
 * Topic helpers: `ensureTopics` creates what is missing and leaves what exists alone (safe to call at every
 * start, from several processes at once); `missingTopics` says which do not exist; `deleteTopics` is for tests
 * and tooling.
 */
import type { Admin } from 'kafkajs';
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
  return withTopicList(client, wanted, async (admin, existing) => {
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
  });
}

/** The topics of `topics` the brokers do not have (or do not show this client), in the order given. */
export function missingTopics(client: KafkaClientOptions, topics: readonly string[]): Promise<string[]> {
  return withTopicList(client, topics, async (_admin, existing) => topics.filter((t) => !existing.has(t)));
}

/** Deletes topics that exist (missing ones are ignored). */
export function deleteTopics(client: KafkaClientOptions, topics: readonly string[]): Promise<void> {
  return withTopicList(client, topics, async (admin, existing) => {
    const present = topics.filter((t) => existing.has(t));
    if (present.length > 0) await admin.deleteTopics({ topics: present });
  });
}

/**
 * Runs `fn` with a connected admin client and the brokers' topic names, then disconnects; a kafkajs failure
 * becomes a delivery error naming `topics`.
 */
async function withTopicList<T>(
  client: KafkaClientOptions,
  topics: readonly string[],
  fn: (admin: Admin, existing: Set<string>) => Promise<T>,
): Promise<T> {
  const admin = createKafka(client).admin();
  try {
    await admin.connect();
    return await fn(admin, new Set(await admin.listTopics()));
  } catch (err) {
    throw toDeliveryError(err, { topics: topics.join(',') });
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}
