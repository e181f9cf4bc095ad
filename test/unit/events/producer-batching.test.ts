/**
 * How the producer coalesces sends, against a FAKE kafkajs producer (pure logic, no broker): the fake refuses a
 * request whose record batch for a partition is over a broker's size limit, as Kafka does with
 * MESSAGE_TOO_LARGE, and a topic it is told to refuse. The real broker paths are in test/integration/events.
 */
import { strict as assert } from 'node:assert';
import { createRequire } from 'node:module';
import type { Message } from 'kafkajs';
import { EventProducer, stageEvent } from '../../../events';

const require = createRequire(__filename);
const { createErrorFromCode } = require('kafkajs/src/protocol/error') as {
  createErrorFromCode: (code: number) => Error;
};
const MESSAGE_TOO_LARGE = 10;
const INVALID_TOPIC = 17;
const BROKER_MAX_BYTES = 1_048_588; // Kafka's default message.max.bytes

interface Request {
  topics: string[];
  bytes: number;
  refused?: string;
}

function fakeProducer(p: EventProducer, refuseTopic?: string): Request[] {
  const requests: Request[] = [];
  (p as unknown as { kafka: unknown }).kafka = {
    producer: () => ({
      connect: async () => undefined,
      disconnect: async () => undefined,
      sendBatch: async ({ topicMessages }: { topicMessages: { topic: string; messages: Message[] }[] }) => {
        await new Promise((r) => setTimeout(r, 5)); // in flight while more sends queue up
        const request: Request = { topics: topicMessages.map((t) => t.topic), bytes: 0 };
        requests.push(request);
        for (const { topic, messages } of topicMessages) {
          let bytes = 0; // one partition per topic here: all its messages in one record batch
          for (const m of messages) bytes += (m.value as Buffer).length + ((m.key as Buffer)?.length ?? 0);
          request.bytes += bytes;
          if (topic === refuseTopic) request.refused = 'invalid topic';
          else if (bytes > BROKER_MAX_BYTES) request.refused = 'too large';
        }
        if (request.refused === 'invalid topic') throw createErrorFromCode(INVALID_TOPIC);
        if (request.refused === 'too large') throw createErrorFromCode(MESSAGE_TOO_LARGE);
        return topicMessages.map((t) => ({
          topicName: t.topic,
          partition: 0,
          errorCode: 0,
          baseOffset: '0',
        }));
      },
    }),
  };
  return requests;
}

/** A committed transaction's events as the relay hands them over: 100 of ~4 KB (~400 KB, a legal transaction). */
const staged = (topic = 'orders') =>
  Array.from({ length: 100 }, (_, i) => stageEvent(topic, { key: 'k', value: 'x'.repeat(4_000) }, i));

describe('EventProducer coalescing (fake kafkajs producer)', () => {
  it('merges concurrent sends only up to maxBatchBytes, so no committed transaction loses its events', async () => {
    const p = new EventProducer({ brokers: ['fake:9092'] });
    const requests = fakeProducer(p);
    try {
      const reports = await Promise.all([1, 2, 3, 4, 5].map((n) => p.publishStaged(`xid-${n}`, staged())));
      const flat = reports.flat();
      assert.equal(flat.length, 500);
      assert.ok(
        flat.every((r) => r.status === 'sent'),
        JSON.stringify(flat.find((r) => r.status !== 'sent')),
      );
      assert.ok(
        requests.length >= 3,
        `${requests.length} requests: ~400 KB each, at most 900 KB per request`,
      );
      assert.deepEqual(
        requests.filter((r) => r.refused || r.bytes > 900_000),
        [],
        'no request over the cap, none refused by the broker',
      );
    } finally {
      await p.stop();
    }
  });

  it('a permanent refusal of a merged request fails only the group it belongs to', async () => {
    const p = new EventProducer({ brokers: ['fake:9092'] });
    fakeProducer(p, 'refused');
    try {
      const small = (topic: string) => [stageEvent(topic, { key: 'k', value: 'v' }, 0)];
      const [first, good, bad, alsoGood] = await Promise.all([
        p.publishStaged('xid-a', small('orders')), // goes alone while the others queue up
        p.publishStaged('xid-b', small('orders')),
        p.publishStaged('xid-c', small('refused')),
        p.publishStaged('xid-d', small('payments')),
      ]);
      assert.equal(first[0].status, 'sent');
      assert.equal(good[0].status, 'sent', 'not failed for the refused topic merged with it');
      assert.equal(alsoGood[0].status, 'sent');
      assert.equal(bad[0].status, 'failed');
      assert.equal(bad[0].status === 'failed' && bad[0].reason, 'invalid-topic');
    } finally {
      await p.stop();
    }
  });
});
