/**
 * Topic helpers: `ensureTopics` creates what is missing and leaves what exists alone (safe to call at every
 * start, from several processes at once); `missingTopics` says which do not exist; `deleteTopics` is for tests
 * and tooling.
 */
import type { Admin, Kafka } from 'kafkajs';
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

/**
 * The topics of `topics` the brokers do not have or refuse this client, in the order given, from each one's
 * metadata (no topic is created). Throws a delivery error when the brokers cannot tell.
 */
export function missingTopics(client: KafkaClientOptions, topics: readonly string[]): Promise<string[]> {
  return missingTopicsOf(createKafka(client), topics);
}

/** `missingTopics` through a Kafka client of one's own: one admin connection, closed after. */
export async function missingTopicsOf(kafka: Kafka, topics: readonly string[]): Promise<string[]> {
  const admin = kafka.admin();
  try {
    await admin.connect();
    const exists = await Promise.all(
      topics.map((topic) =>
        admin.fetchTopicMetadata({ topics: [topic] }).then(
          () => true,
          (err: unknown) => {
            if (toDeliveryError(err, { topic }).reason === 'topic-unavailable') return false;
            throw err;
          },
        ),
      ),
    );
    return topics.filter((_, i) => !exists[i]);
  } catch (err) {
    throw toDeliveryError(err, { topics: topics.join(',') });
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
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
