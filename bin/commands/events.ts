/**
 * `dmtp events redrive <dead-letter-topic>`: sends dead-lettered events back (events/redrive.ts), one line per
 * copy, a summary on stderr; exit 1 when a copy had to be skipped.
 *
 * `dmtp events lag <group> --topic T`: the group's lag per partition (events/lag.ts).
 *
 * `dmtp events topics [topic,...] [--create]`: which topics exist, with their partitions; `--create` makes the
 * missing ones (events/admin.ts `ensureTopics`), for brokers and coordinators that do not create topics.
 *
 * `dmtp events tail <topic>`: prints a topic's messages as they arrive (or from the beginning), through a plain
 * kafkajs consumer in a throw-away group that is deleted on exit, so tailing leaves nothing behind.
 *
 * "From the end" is made exact rather than left to the group's offset reset: the partitions' high watermarks
 * are read first and the consumer seeks there, so every message produced after the "tailing" line on stderr
 * is printed, whenever the group join completes.
 */
import { randomBytes } from 'node:crypto';
import type { Admin, Consumer, KafkaMessage } from 'kafkajs';
import { ensureTopics } from '../../events/admin';
import { createKafka } from '../../events/client';
import { validateTopic } from '../../events/validation';
import { consumerLag, type ConsumerLag } from '../../events/lag';
import { redrive, type RedriveCopy } from '../../events/redrive';
import { DEFAULT_KAFKA, JSON_FLAG, type Command, type Io } from '../command';
import { InvalidArgumentError, NotFoundError } from '../../common';
import { renderTable } from '../table';
import { CliError } from '../errors';
import { envKafkaSecurity } from '../tls';

/** A CLI command waits seconds for Kafka, not a service's minute of retries; TLS and SASL from DMTP_KAFKA_*. */
const cliKafka = () => ({
  clientId: 'dmtp-cli',
  connectionTimeoutMs: 3_000,
  requestTimeoutMs: 10_000,
  requestRetries: 2,
  initialRetryTimeMs: 200,
  ...envKafkaSecurity(),
});

function line(topic: string, partition: number, m: KafkaMessage, json: boolean): string {
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(m.headers ?? {})) {
    if (v !== undefined) headers[k] = Array.isArray(v) ? v.map(String).join(',') : String(v);
  }
  const key = m.key ? m.key.toString('utf8') : null;
  const value = m.value ? m.value.toString('utf8') : null;
  if (json) {
    const timestamp = Number(m.timestamp);
    return JSON.stringify({ topic, partition, offset: m.offset, timestamp, key, headers, value }) + '\n';
  }
  const hs = Object.entries(headers).map(([k, v]) => `${k}=${v}`);
  const time = new Date(Number(m.timestamp)).toISOString();
  const oneLine = (s: string | null) => (s === null ? '-' : s.replace(/\r?\n/g, '\\n'));
  return `${partition}:${m.offset}  ${time}  key=${oneLine(key)}  ${hs.length ? `{${hs.join(', ')}}  ` : ''}${oneLine(value)}\n`;
}

interface TailOptions {
  topic: string;
  brokers: string[];
  fromBeginning: boolean;
  max?: number;
  timeoutMs?: number;
  json: boolean;
}

async function tail(o: TailOptions, io: Io): Promise<number> {
  const kafka = createKafka({ brokers: o.brokers, ...cliKafka() });
  const unreachable = (err: unknown) =>
    new CliError(`cannot reach Kafka at ${o.brokers.join(',')} (${(err as Error).message ?? String(err)})`);
  const admin: Admin = kafka.admin();
  const groupId = `dmtp-cli-tail-${randomBytes(6).toString('hex')}`;
  let consumer: Consumer | undefined;
  let count = 0;
  let finish!: () => void;
  const done = new Promise<void>((r) => (finish = r));
  const onSignal = () => finish();
  // `on`: a second Ctrl-C during the clean-up must not kill it and leave the throw-away group behind.
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const timer = o.timeoutMs ? setTimeout(finish, o.timeoutMs) : undefined;
  try {
    try {
      await admin.connect();
      if (!(await admin.listTopics()).includes(o.topic))
        throw new CliError(`topic '${o.topic}' does not exist on Kafka at ${o.brokers.join(',')}`);
    } catch (err) {
      throw err instanceof CliError ? err : unreachable(err);
    }
    const ends = await admin.fetchTopicOffsets(o.topic);
    consumer = kafka.consumer({ groupId, allowAutoTopicCreation: false, maxWaitTimeInMs: 500 });
    try {
      await consumer.connect();
      await consumer.subscribe({ topics: [o.topic], fromBeginning: o.fromBeginning });
    } catch (err) {
      throw unreachable(err);
    }
    await consumer.run({
      eachMessage: async ({ topic, partition, message }) => {
        if (o.max !== undefined && count >= o.max) return;
        io.out(line(topic, partition, message, o.json));
        if (o.max !== undefined && ++count >= o.max) finish();
      },
    });
    if (!o.fromBeginning)
      for (const p of ends) consumer.seek({ topic: o.topic, partition: p.partition, offset: p.high });
    io.err(
      `tailing ${o.topic} from the ${o.fromBeginning ? 'beginning' : 'end'} (${ends.length} partitions)\n`,
    );
    if (o.max !== 0) await done;
    return 0;
  } finally {
    clearTimeout(timer);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await consumer?.disconnect().catch(() => undefined);
    if (consumer) await admin.deleteGroups([groupId]).catch(() => undefined);
    await admin.disconnect().catch(() => undefined);
  }
}

const tailCommand: Command = {
  spec: {
    name: 'events tail',
    summary: "Print a topic's messages (partition:offset, time, key, headers, value) as they arrive.",
    positionals: [{ name: 'topic', description: 'the Kafka topic', required: true }],
    flags: {
      'from-beginning': { type: 'boolean', description: 'start at the oldest message instead of the end' },
      max: { type: 'integer', description: 'exit after this many messages' },
      timeout: {
        type: 'duration',
        timer: true,
        description: 'exit after this long (default: run until Ctrl-C)',
      },
      brokers: {
        type: 'string',
        description: 'Kafka bootstrap brokers, comma-separated',
        env: 'KAFKA_BROKERS',
        default: DEFAULT_KAFKA,
        valueName: 'host:port,...',
      },
      ...JSON_FLAG,
    },
    notes: ['With --json each message is one JSON object per line (key and value as UTF-8 text).'],
    examples: [
      'dmtp events tail OrderPlaced',
      'dmtp events tail OrderPlaced --from-beginning --max 10 --json',
    ],
  },
  run: ({ args, io }) =>
    tail(
      {
        topic: args.positionals[0],
        brokers: String(args.flags.brokers)
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean),
        fromBeginning: Boolean(args.flags['from-beginning']),
        max: args.flags.max as number | undefined,
        timeoutMs: args.flags.timeout as number | undefined,
        json: Boolean(args.flags.json),
      },
      io,
    ),
};

const BROKERS_FLAG = tailCommand.spec.flags!.brokers;

function commaList(value: unknown): string[] {
  return String(value)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

function copyLine(dlq: string, c: RedriveCopy, dryRun: boolean): string {
  const at = `${dlq} ${c.partition}:${c.offset}`;
  const about = `id=${c.id ?? '-'}  group=${c.group ?? '-'}  ${c.kind ?? '-'}`;
  if (c.skipped !== undefined) return `${at}  skipped: ${c.skipped}  (${about})\n`;
  const to = `${c.to!.topic}${c.to!.partition === undefined ? '' : `:${c.to!.partition}`}`;
  return `${at}  ${dryRun ? 'would go' : '→'} ${to}  ${about}\n`;
}

const redriveCommand: Command = {
  spec: {
    name: 'events redrive',
    summary: 'Send dead-lettered events back to the group that gave up on them (once the cause is fixed).',
    positionals: [{ name: 'dead-letter-topic', description: 'e.g. orders.dlq', required: true }],
    flags: {
      to: { type: 'string', description: 'send every copy to this topic instead of the one it came from' },
      'all-groups': {
        type: 'boolean',
        description: 'send each copy to every consumer group of its topic, not only the one that gave up',
      },
      max: { type: 'integer', description: 'stop after this many copies' },
      'dry-run': { type: 'boolean', description: 'print what would be sent; send nothing, keep no progress' },
      timeout: {
        type: 'duration',
        timer: true,
        description: 'give up reaching the end after this long (what was sent is kept)',
        default: 60_000,
      },
      brokers: BROKERS_FLAG,
      ...JSON_FLAG,
    },
    notes: [
      'Each copy goes back with its key, value, headers and event id (consumers drop one they handled), to its own partition, with a fresh dmtp-published-at-ms.',
      'Progress is kept in consumer group dmtp-redrive.<dead-letter-topic>: a second run goes on after the last copy sent.',
      'A copy without its value or headers (too large to dead-letter) is skipped and named; the exit code is then 1.',
    ],
    examples: ['dmtp events redrive orders.dlq --dry-run', 'dmtp events redrive orders.dlq --max 100'],
  },
  run: async ({ args, io }) => {
    const dlq = args.positionals[0];
    const dryRun = Boolean(args.flags['dry-run']);
    const json = Boolean(args.flags.json);
    const brokers = commaList(args.flags.brokers);
    let result;
    // Ctrl-C ends the run after the batch being sent (its progress kept) and leaves the group cleanly.
    const stop = new AbortController();
    const onSignal = () => stop.abort();
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    try {
      result = await redrive({
        brokers,
        ...cliKafka(),
        deadLetterTopic: dlq,
        to: args.flags.to as string | undefined,
        allGroups: Boolean(args.flags['all-groups']),
        max: args.flags.max as number | undefined,
        dryRun,
        timeoutMs: args.flags.timeout as number,
        signal: stop.signal,
        onCopy: (c) => io.out(json ? JSON.stringify({ topic: dlq, ...c }) + '\n' : copyLine(dlq, c, dryRun)),
      });
    } catch (err) {
      if (err instanceof InvalidArgumentError) throw new CliError(err.message);
      throw new CliError(`${(err as Error).message} (Kafka at ${brokers.join(',')})`);
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    const done = dryRun ? 'would send' : 'sent back';
    const progress = dryRun ? 'dry run: no progress kept' : `progress in group ${result.progressGroup}`;
    io.err(
      `${done} ${result.redriven}, skipped ${result.skipped.length} of ${dlq}` +
        `${result.complete ? '' : ' (stopped before the end: run again for the rest)'}; ${progress}\n`,
    );
    return result.skipped.length > 0 ? 1 : 0;
  },
};

const lagCommand: Command = {
  spec: {
    name: 'events lag',
    summary:
      'How far a consumer group is behind: per partition, the end of the log minus its committed offset.',
    positionals: [{ name: 'group', description: 'the consumer group', required: true }],
    flags: {
      topic: {
        type: 'string',
        description: 'the topics the group reads, comma-separated',
        valueName: 'topic,...',
      },
      brokers: BROKERS_FLAG,
      ...JSON_FLAG,
    },
    notes: [
      'A partition where the group has committed nothing counts from the oldest event kept (COMMITTED shows -).',
      'With --json one object per partition per line; the total goes to stderr either way.',
    ],
    examples: [
      'dmtp events lag billing --topic orders',
      'dmtp events lag billing --topic orders,refunds --json',
    ],
  },
  run: async ({ args, io }) => {
    const group = args.positionals[0];
    const topics = commaList(args.flags.topic ?? '');
    if (topics.length === 0) throw new CliError('--topic is required (the topics the group reads)');
    const brokers = commaList(args.flags.brokers);
    let lag: ConsumerLag;
    try {
      lag = await consumerLag({ brokers, ...cliKafka(), group, topics });
    } catch (err) {
      if (err instanceof InvalidArgumentError || err instanceof NotFoundError)
        throw new CliError(err.message);
      throw new CliError(`${(err as Error).message} (Kafka at ${brokers.join(',')})`);
    }
    const rows = lag.topics.flatMap((t) => t.partitions.map((p) => ({ topic: t.topic, ...p })));
    if (args.flags.json) for (const r of rows) io.out(JSON.stringify({ group, ...r }) + '\n');
    else
      io.out(
        renderTable(
          ['topic', 'partition', 'committed', 'end', 'lag'],
          rows.map((r) => [r.topic, r.partition, r.committed, r.end, r.lag]),
        ),
      );
    io.err(`group ${group}: ${lag.lag} events behind on ${topics.join(', ')}\n`);
    return 0;
  },
};

interface TopicRow {
  topic: string;
  state: 'present' | 'missing' | 'created';
  partitions: number;
}

/** The partitions of each present topic of `topics` (all the brokers' own topics but `__…` when none is named). */
async function topicRows(brokers: string[], named: string[]): Promise<TopicRow[]> {
  const admin = createKafka({ brokers, ...cliKafka() }).admin();
  try {
    await admin.connect();
    const listed = await admin.listTopics();
    const present = new Set(listed);
    const topics = named.length > 0 ? named : listed.filter((t) => !t.startsWith('__')).sort();
    const there = topics.filter((t) => present.has(t));
    const { topics: meta } =
      there.length > 0 ? await admin.fetchTopicMetadata({ topics: there }) : { topics: [] };
    const partitions = new Map(meta.map((m) => [m.name, m.partitions.length]));
    return topics.map((topic) =>
      present.has(topic)
        ? { topic, state: 'present', partitions: partitions.get(topic) ?? 0 }
        : { topic, state: 'missing', partitions: 0 },
    );
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

const topicsCommand: Command = {
  spec: {
    name: 'events topics',
    summary:
      'Which topics exist, with their partitions; --create makes the missing ones (for brokers that do not).',
    positionals: [
      {
        name: 'topic,...',
        description: 'the topics to look for, comma-separated (default: every topic but the brokers’ own)',
      },
    ],
    flags: {
      create: { type: 'boolean', description: 'create the named topics that are missing' },
      partitions: { type: 'integer', description: 'partitions of each topic created', default: 1 },
      'replication-factor': {
        type: 'integer',
        description: "replicas of each topic created (default: the brokers' default.replication.factor)",
      },
      brokers: BROKERS_FLAG,
      ...JSON_FLAG,
    },
    notes: [
      'Exit code 1 when a named topic is missing (without --create): `dmtp events topics orders,payments || …`.',
      'Existing topics are left as they are: --partitions and --replication-factor apply to created ones only.',
      'A coordinator run with --no-auto-create-topics keeps a committed event for a missing topic until it exists: `dmtp tx list --state committing` names the topic.',
    ],
    examples: [
      'dmtp events topics',
      'dmtp events topics orders,payments',
      'dmtp events topics orders,orders.dlq --create --partitions 6',
    ],
  },
  run: async ({ args, io }) => {
    const brokers = commaList(args.flags.brokers);
    const named = [...new Set(commaList(args.positionals[0] ?? ''))];
    const create = Boolean(args.flags.create);
    const partitions = args.flags.partitions as number;
    const replication = args.flags['replication-factor'] as number | undefined;
    try {
      named.forEach((t) => validateTopic(t));
    } catch (err) {
      throw new CliError((err as Error).message);
    }
    if (create && named.length === 0) throw new CliError('--create needs the topics to create');
    if (partitions < 1) throw new CliError('--partitions must be 1 or more');
    if (replication !== undefined && replication < 1)
      throw new CliError('--replication-factor must be 1 or more');
    let rows: TopicRow[];
    try {
      const created = create
        ? new Set(
            await ensureTopics({ brokers, ...cliKafka() }, named, {
              partitions,
              replicationFactor: replication ?? -1,
            }),
          )
        : new Set<string>();
      rows = (await topicRows(brokers, named)).map((r) =>
        created.has(r.topic) ? { ...r, state: 'created' } : r,
      );
    } catch (err) {
      throw new CliError(`${(err as Error).message} (Kafka at ${brokers.join(',')})`);
    }
    if (args.flags.json) for (const r of rows) io.out(JSON.stringify(r) + '\n');
    else if (rows.length === 0) io.out('no topics\n');
    else
      io.out(
        renderTable(
          ['topic', 'partitions', 'state'],
          rows.map((r) => [r.topic, r.state === 'missing' ? '-' : r.partitions, r.state]),
        ),
      );
    const missing = rows.filter((r) => r.state === 'missing').map((r) => r.topic);
    if (missing.length > 0) io.err(`missing: ${missing.join(', ')}\n`);
    return missing.length > 0 ? 1 : 0;
  },
};

export const commands: Record<string, Command> = {
  tail: tailCommand,
  redrive: redriveCommand,
  lag: lagCommand,
  topics: topicsCommand,
};
