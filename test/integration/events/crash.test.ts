import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { EventsKit, waitFor } from '../../support/events-kit';

const SLOW_CONSUMER = path.resolve(__dirname, '../../support/events-slow-consumer.ts');

describe('events/consumer crash (real Kafka, kill -9)', function () {
  this.timeout(45_000);
  let kit: EventsKit;
  let child: ChildProcess | undefined;
  beforeEach(function () {
    kit = new EventsKit(this);
  });
  afterEach(async () => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    child = undefined;
    await kit.close();
  });

  it('redelivers rather than loses when a consumer is killed mid-batch', async function () {
    const total = 120;
    const topic = await kit.topic(1);
    const group = kit.group();
    const producer = kit.producer();
    const sent = await Promise.all(
      Array.from({ length: total }, (_, i) => producer.publish(topic, { key: `k${i % 4}`, value: i })),
    );
    assert.ok(sent.every((r) => r.status === 'sent'));

    // The first consumer, in its own process, handles 25 ms per event and is killed after ~30 of 120: mid-batch.
    const byChild = new Set<string>();
    const proc = spawn(process.execPath, ['--import', 'tsx', SLOW_CONSUMER, topic, group, '25'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    child = proc;
    readline.createInterface({ input: proc.stdout! }).on('line', (line) => {
      if (line.startsWith('handled ')) byChild.add(line.slice('handled '.length));
    });
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    await waitFor('the child to handle 30 events', () => byChild.size >= 30, 30_000);
    proc.kill('SIGKILL');
    await exited;
    const handledBeforeKill = byChild.size;
    assert.ok(handledBeforeKill < total, 'killed mid-stream');

    // A second consumer in the same group takes over once the group has dropped the dead member.
    const bySecond = new Set<string>();
    const second = await kit.subscribe({ topics: [topic], group, handler: (e) => void bySecond.add(e.id) });
    await waitFor(
      'every event handled at least once',
      () => sent.every((r) => byChild.has(r.id) || bySecond.has(r.id)),
      30_000,
    );
    const missing = sent.filter((r) => !byChild.has(r.id) && !bySecond.has(r.id));
    assert.deepEqual(missing, []);
    const redelivered = [...bySecond].filter((id) => byChild.has(id)).length;
    assert.ok(
      bySecond.size >= total - handledBeforeKill,
      `the second consumer handled ${bySecond.size}, at least the ${total - handledBeforeKill} the child had not`,
    );
    assert.ok(second.stats.handled >= total - handledBeforeKill);
    // With offsets committed only after a batch's handlers, the child's in-flight batch is handled again.
    assert.ok(redelivered > 0, 'events the killed consumer had handled but not committed were redelivered');
  });
});
