/**
 * EventMetrics.trackProducer against FAKE producer stats (pure logic, no broker): what the exposition says, that a
 * counter never goes back when a producer is untracked, and that its gauges go. The real producer's stats are
 * checked in producer-batching.test.ts and on real Kafka in test/integration/events/lag-metrics.test.ts.
 */
import { strict as assert } from 'node:assert';
import { EventMetrics, type ProducerStats } from '../../../events';

const stats = (): ProducerStats => ({
  sent: 0,
  failed: {
    'invalid-topic': 0,
    'not-serialisable': 0,
    'too-large': 0,
    refused: 0,
    unavailable: 0,
    'topic-unavailable': 0,
  },
  queued: 0,
  missingTopics: 0,
});

/** The value of one series in the exposition, or undefined when it is not there. */
function value(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('EventMetrics.trackProducer (fake producer stats)', () => {
  it('exports sent and failed-by-reason counts, queued events and missing topics per producer name', async () => {
    const metrics = new EventMetrics();
    const a = { stats: stats() };
    const b = { stats: stats() };
    metrics.trackProducer(a, 'app');
    const untrackB = metrics.trackProducer(b, 'app'); // two producers under one name add up
    Object.assign(a.stats, { sent: 5, queued: 3, missingTopics: 1 });
    a.stats.failed['topic-unavailable'] = 2;
    b.stats.sent = 4;
    b.stats.failed['too-large'] = 1;
    let text = await metrics.text();
    assert.equal(value(text, 'dmtp_events_published_total{producer="app",outcome="sent"}'), 9);
    assert.equal(value(text, 'dmtp_events_published_total{producer="app",outcome="topic_unavailable"}'), 2);
    assert.equal(value(text, 'dmtp_events_published_total{producer="app",outcome="too_large"}'), 1);
    assert.equal(value(text, 'dmtp_events_published_total{producer="app",outcome="refused"}'), 0);
    assert.equal(value(text, 'dmtp_events_producer_queued{producer="app"}'), 3);
    assert.equal(value(text, 'dmtp_events_producer_missing_topics{producer="app"}'), 1);

    // Untracked (stopped), b's counts stay in the totals; what a counts later adds to them.
    untrackB();
    a.stats.sent = 6;
    a.stats.queued = 0;
    text = await metrics.text();
    assert.equal(value(text, 'dmtp_events_published_total{producer="app",outcome="sent"}'), 10);
    assert.equal(value(text, 'dmtp_events_producer_queued{producer="app"}'), 0);
    untrackB(); // twice: nothing more
    assert.equal(
      value(await metrics.text(), 'dmtp_events_published_total{producer="app",outcome="sent"}'),
      10,
    );
  });

  it('drops the gauges of a name with no producer left, keeps its counters, and refuses an empty name', async () => {
    const metrics = new EventMetrics();
    const p = { stats: stats() };
    p.stats.sent = 2;
    p.stats.queued = 7;
    const untrack = metrics.trackProducer(p, 'relay');
    assert.equal(value(await metrics.text(), 'dmtp_events_producer_queued{producer="relay"}'), 7);
    untrack();
    const text = await metrics.text();
    assert.equal(value(text, 'dmtp_events_producer_queued{producer="relay"}'), undefined);
    assert.equal(value(text, 'dmtp_events_published_total{producer="relay",outcome="sent"}'), 2);
    assert.throws(() => metrics.trackProducer(p, ''), {
      code: 3,
      message: /name must be a non-empty string/,
    });
  });
});
