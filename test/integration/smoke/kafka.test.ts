import { strict as assert } from 'node:assert';
import { Kafka, logLevel } from 'kafkajs';
import { KAFKA_BROKERS, nameFor } from '../../support/env';

// Runs first and fails loudly when the local Kafka (KRaft) is missing or broken.
describe('smoke: kafka', function () {
  this.timeout(60_000);

  it('round-trips a message through a real broker with kafkajs', async function () {
    const topic = nameFor(this);
    const kafka = new Kafka({ clientId: topic, brokers: KAFKA_BROKERS, logLevel: logLevel.NOTHING });
    const admin = kafka.admin();
    const producer = kafka.producer({ idempotent: true });
    const consumer = kafka.consumer({ groupId: topic });
    try {
      await admin.connect();
      await admin.createTopics({ topics: [{ topic, numPartitions: 1 }], waitForLeaders: true });
      await producer.connect();
      await producer.send({ topic, acks: -1, messages: [{ key: 'k', value: 'hello from dmtp' }] });
      await consumer.connect();
      await consumer.subscribe({ topics: [topic], fromBeginning: true });
      const received = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no message on ${topic} within 30 s`)), 30_000);
        void consumer.run({
          eachMessage: async ({ message }) => {
            clearTimeout(timer);
            resolve(message.value?.toString() ?? '');
          },
        });
      });
      assert.equal(received, 'hello from dmtp');
    } finally {
      await consumer.disconnect();
      await producer.disconnect();
      await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
      await admin.disconnect();
    }
  });
});
