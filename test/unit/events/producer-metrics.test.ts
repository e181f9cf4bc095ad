/**
 * EventMetrics.trackProducer against FAKE producer stats (pure logic, no broker): what the exposition says, that a
 * counter never goes back when a producer is untracked, that its gauges go, and that a producer (or, with a FAKE
 * subscription, a subscription) tracked again is counted once. The real producer's stats are
 * checked in producer-batching.test.ts and on real Kafka in test/integration/events/lag-metrics.test.ts.
 */
import { strict as assert } from 'node:assert';
import { EventMetrics, type ProducerStats, type Subscription } from '../../../events';

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

describe('EventMetrics.trackProducer and track (fake stats)', () => {
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

  it('counts a producer once: tracked twice is refused, tracked again after an untrack adds only what came since', async () => {
    const metrics = new EventMetrics();
    const p = { stats: stats() };
    p.stats.sent = 3;
    const untrack = metrics.trackProducer(p, 'app');
    assert.throws(() => metrics.trackProducer(p, 'other'), {
      code: 3,
      message: /this producer is tracked already \(as 'app'\)/,
    });
    const sent = async () =>
      value(await metrics.text(), 'dmtp_events_published_total{producer="app",outcome="sent"}');
    assert.equal(await sent(), 3);
    untrack();
    p.stats.sent = 5; // counted while untracked: not exported until tracked again
    assert.equal(await sent(), 3);
    const again = metrics.trackProducer(p, 'app');
    assert.equal(await sent(), 5, 'the 2 sent since the untrack, not its 5 once more');
    p.stats.sent = 6;
    untrack(); // the first undo again: the second tracking stays
    assert.equal(await sent(), 6);
    again();
    assert.equal(await sent(), 6);
  });

  it('counts a subscription once too: tracked twice is refused, tracked again adds only what came since', async () => {
    const metrics = new EventMetrics();
    const counts = {
      handled: 4,
      filtered: 0,
      duplicates: 0,
      retried: 0,
      deadLettered: 0,
      expired: 0,
      deadLetterRefused: 0,
    };
    // A stand-in with what EventMetrics reads: its group, its stats, its lag (none).
    const sub = {
      group: 'billing',
      stats: counts,
      lag: async () => ({ topics: [] }),
    } as unknown as Subscription;
    const untrack = metrics.track(sub);
    assert.throws(() => metrics.track(sub), { code: 3, message: /group 'billing'\) is tracked already/ });
    const handled = async () =>
      value(await metrics.text(), 'dmtp_events_consumed_total{group="billing",outcome="handled"}');
    assert.equal(await handled(), 4);
    untrack();
    counts.handled = 7;
    const again = metrics.track(sub);
    assert.equal(await handled(), 7, 'the 3 handled since the untrack, not its 7 once more');
    again();
    assert.equal(await handled(), 7);
  });
});
