/**
 * Topic helpers: `ensureTopics` creates what is missing and leaves what exists alone (safe to call at every
 * start, from several processes at once); `missingTopics` says which do not exist; `deleteTopics` is for tests
 * and tooling. `scoutTopics` is the producer's look-up before its first request naming a topic.
 */
import { ConfigResourceTypes, type Admin, type Kafka } from 'kafkajs';
import { createKafka, toDeliveryError, type KafkaClientOptions } from './client';
import type { DeliveryError } from './errors';
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
export async function missingTopics(
  client: KafkaClientOptions,
  topics: readonly string[],
): Promise<string[]> {
  const absent = await withAdmin(createKafka(client), topics, (admin) => absentTopics(admin, topics));
  return topics.filter((t) => absent.has(t));
}

/**
 * The producer's look-up of topics, over one admin connection and without kafkajs' retries (it throws a delivery
 * error as soon as the brokers cannot tell which topics they have; the producer then goes on as if it had not
 * asked): which of `topics` the brokers do not have or refuse this client, each with the error its metadata
 * gave; and, with `autoCreate` and only if some are absent, whether the brokers would create them on a request
 * naming them (their `auto.create.topics.enable`: undefined when they do not say, for want of DescribeConfigs
 * access).
 */
export function scoutTopics(
  kafka: Kafka,
  topics: readonly string[],
  options: { autoCreate?: boolean } = {},
): Promise<{ absent: Map<string, DeliveryError>; brokersCreate?: boolean }> {
  const ask = async (admin: Admin) => {
    const absent = await absentTopics(admin, topics);
    if (absent.size === 0 || !options.autoCreate) return { absent };
    return { absent, brokersCreate: await brokersCreateTopics(admin).catch(() => undefined) };
  };
  return withAdmin(kafka, topics, ask, { retries: 0 });
}

/** The topics of `topics` whose metadata says they are absent (or refused), with that error; no topic is created. */
async function absentTopics(admin: Admin, topics: readonly string[]): Promise<Map<string, DeliveryError>> {
  const absent = new Map<string, DeliveryError>();
  await Promise.all(
    topics.map((topic) =>
      admin.fetchTopicMetadata({ topics: [topic] }).then(
        () => undefined,
        (err: unknown) => {
          const error = toDeliveryError(err, { topic });
          if (error.reason !== 'topic-unavailable') throw err;
          absent.set(topic, error);
        },
      ),
    ),
  );
  return absent;
}

/** One broker's `auto.create.topics.enable` (brokers of a cluster share it in practice). */
async function brokersCreateTopics(admin: Admin): Promise<boolean | undefined> {
  const { brokers } = await admin.describeCluster();
  if (brokers.length === 0) return undefined;
  const { resources } = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [
      {
        type: ConfigResourceTypes.BROKER,
        name: String(brokers[0].nodeId),
        configNames: [AUTO_CREATE],
      },
    ],
  });
  const value = resources[0]?.configEntries.find((e) => e.configName === AUTO_CREATE)?.configValue;
  return value === 'true' ? true : value === 'false' ? false : undefined;
}

const AUTO_CREATE = 'auto.create.topics.enable';

/** Deletes topics that exist (missing ones are ignored). */
export function deleteTopics(client: KafkaClientOptions, topics: readonly string[]): Promise<void> {
  return withTopicList(client, topics, async (admin, existing) => {
    const present = topics.filter((t) => existing.has(t));
    if (present.length > 0) await admin.deleteTopics({ topics: present });
  });
}

/** `withAdmin` with the brokers' topic names. */
async function withTopicList<T>(
  client: KafkaClientOptions,
  topics: readonly string[],
  fn: (admin: Admin, existing: Set<string>) => Promise<T>,
): Promise<T> {
  return withAdmin(createKafka(client), topics, async (admin) =>
    fn(admin, new Set(await admin.listTopics())),
  );
}

/** Runs `fn` with a connected admin client, then disconnects; a kafkajs failure becomes a delivery error naming `topics`. */
async function withAdmin<T>(
  kafka: Kafka,
  topics: readonly string[],
  fn: (admin: Admin) => Promise<T>,
  retry?: { retries: number },
): Promise<T> {
  const admin = kafka.admin(retry && { retry });
  try {
    await admin.connect();
    return await fn(admin);
  } catch (err) {
    throw toDeliveryError(err, { topics: topics.join(',') });
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}
