/**
 * KafkaLifecycleSink's bound and its failure log, over a FAKE producer (pure logic, no broker): one whose sends
 * never finish, one that answers every notice failed.
 */
import { strict as assert } from 'node:assert';
import { KafkaLifecycleSink } from '../../../coordinator/event-sink-kafka';
import type { EventProducer } from '../../../events';

describe('KafkaLifecycleSink', () => {
  it('holds at most maxPending notices while Kafka does not answer; later ones are dropped and counted', async () => {
    // Before, every notice waited in the producer's queue for as long as Kafka was down: 2–3 per transaction.
    const waiting: (() => void)[] = [];
    const producer = {
      publish: () =>
        new Promise((resolve) =>
          waiting.push(() => resolve({ status: 'sent', id: '', topic: 't', partition: 0, offset: '0' })),
        ),
    } as unknown as EventProducer;
    const sink = new KafkaLifecycleSink(producer, 'dmtp.lifecycle', 100);
    const notice = (i: number) =>
      ({ kind: 'committed', xid: `c:1:${i}`, owner: 'c', atMs: 0, elapsedMs: 0, branches: 1 }) as const;
    for (let i = 0; i < 150; i++) sink.notify(notice(i));
    assert.equal(waiting.length, 100);
    assert.equal(sink.dropped, 50);
    // Kafka answers: room again.
    for (const done of waiting.splice(0)) done();
    await new Promise((r) => setImmediate(r));
    sink.notify(notice(150));
    assert.equal(waiting.length, 1);
    assert.equal(sink.dropped, 50);
  });

  it('counts every notice Kafka did not take, and says so in one line per 10 s, not one per notice', async () => {
    // Before, a lifecycle topic missing (auto-create off) wrote a warning for each notice: 2–3 per transaction.
    const producer = {
      publish: async (topic: string) => ({
        status: 'failed',
        id: '',
        topic,
        reason: 'topic-unavailable',
        retriable: true,
        error: new Error('no such topic'),
      }),
    } as unknown as EventProducer;
    const sink = new KafkaLifecycleSink(producer, 'dmtp.lifecycle');
    const lines: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((chunk: string) => lines.push(String(chunk)) > 0) as typeof process.stderr.write;
    try {
      for (let i = 0; i < 300; i++)
        sink.notify({ kind: 'committed', xid: `c:1:${i}`, owner: 'c', atMs: 0, elapsedMs: 0, branches: 1 });
      await new Promise((r) => setImmediate(r));
    } finally {
      process.stderr.write = write;
    }
    assert.equal(sink.unpublished, 300);
    const warnings = lines.filter((l) => l.includes('lifecycle events not published'));
    assert.equal(warnings.length, 1, lines.join(''));
    assert.match(warnings[0], /"topic":"dmtp.lifecycle".*"reason":"topic-unavailable"/);
  });
});
