import { strict as assert } from 'node:assert';
import { Etcd3 } from 'etcd3';
import { EtcdRegistry, readPrefix, type EtcdRegistration } from '../../../registry';
import { nameFor } from '../../support/env';
import { eventually, recorder } from '../../support/registry-contract';
import { OwnEtcd } from '../../support/own-etcd';

// Faults that touch all of etcd (a compaction, a crash) run against an etcd this file starts and stops itself,
// never the shared one other tests are using.
const TTL = 2;

describe('EtcdRegistry under etcd faults (own etcd on :23890)', function () {
  this.timeout(60_000);
  let etcd: OwnEtcd;
  let raw: Etcd3 | undefined;
  const opened: EtcdRegistry[] = [];
  const open = (prefix: string, client?: Etcd3) => {
    const r = new EtcdRegistry({ hosts: etcd.endpoint, prefix, leaseTtlSeconds: TTL, client });
    opened.push(r);
    return r;
  };

  before(async function () {
    etcd = new OwnEtcd(`registry-faults-${Math.random().toString(36).slice(2, 8)}`);
    await etcd.destroy(); // a leftover data dir of the same name would be reused otherwise
    await etcd.start();
  });

  after(async function () {
    await etcd.destroy();
  });

  afterEach(async function () {
    for (const r of opened.splice(0).reverse()) await r.close();
    raw?.close();
    raw = undefined;
  });

  it('readPrefix starts again at the newest revision when compaction passes the one its pages are pinned to', async function () {
    // Before, a large prefix read (a coordinator loading its log, a registry sync) failed as a whole with
    // "required revision has been compacted" when auto-compaction ran between two of its pages.
    const prefix = `/dmtp-test/${nameFor(this)}/`;
    raw = new Etcd3({ hosts: etcd.endpoint });
    const client = raw;
    for (const k of ['a', 'b', 'c']) await client.put(prefix + k).value(k);
    const realRange = client.kv.range.bind(client.kv);
    const revisions: (string | undefined)[] = [];
    let compactions = 0;
    client.kv.range = async (req, options) => {
      revisions.push(req.revision === undefined ? undefined : String(req.revision));
      const res = await realRange(req, options);
      if (compactions === 0 && req.revision === undefined) {
        // After the first page: a new key, and compaction up to now (past the revision the read is pinned to).
        compactions++;
        const put = await client.put(prefix + 'd').value('d');
        await client.kv.compact({ revision: put.header.revision });
      }
      return res;
    };
    const { kvs } = await readPrefix(client, prefix, 1);
    assert.deepEqual(
      kvs.map((kv) => kv.key.toString().slice(prefix.length)),
      ['a', 'b', 'c', 'd'],
      'one consistent view, read again whole',
    );
    assert.equal(
      revisions.filter((r) => r === undefined).length,
      2,
      `page revisions: ${revisions.join(',')}`,
    );
  });

  it('re-reads and reconciles when its watch revision was compacted away', async function () {
    const prefix = `/dmtp-test/${nameFor(this)}`;
    const writer = open(prefix);
    const r1 = await writer.register({ service: 'svc', instanceId: 'i1', address: '127.0.0.1:1' });
    await writer.register({ service: 'svc', instanceId: 'i2', address: '127.0.0.1:2' });

    // The observer's first read is held back while i1 leaves, i3 joins and etcd compacts past the read's
    // revision: the watch it then starts from read revision + 1 is cancelled by etcd as compacted.
    raw = new Etcd3({ hosts: etcd.endpoint });
    const observerClient = new Etcd3({ hosts: etcd.endpoint });
    const realRange = observerClient.kv.range.bind(observerClient.kv);
    let compactedAt = 0;
    let held = false;
    observerClient.kv.range = async (...args: Parameters<typeof realRange>) => {
      const res = await realRange(...args);
      if (held) return res;
      held = true;
      await r1.deregister();
      await writer.register({ service: 'svc', instanceId: 'i3', address: '127.0.0.1:3' });
      const put = await raw!.put('/dmtp-test/compaction-marker').value('x').exec();
      compactedAt = Number(put.header.revision);
      await raw!.kv.compact({ revision: put.header.revision, physical: true });
      return res;
    };
    const observer = open(prefix, observerClient);
    const rec = recorder();
    observer.watch('svc', rec.listener);
    await observer.instances('svc');
    assert.ok(compactedAt > 0, 'the compaction ran');

    await eventually(
      'the observer reconciled to i2, i3',
      () =>
        observer
          .cached('svc')
          .map((i) => i.instanceId)
          .join() === 'i2,i3',
    );
    assert.ok(
      Number(observer.serviceWatch('svc')!.watchRevision) > compactedAt,
      'watching past the compaction',
    );
    assert.deepEqual(rec.lines(), [
      'add:i1@127.0.0.1:1',
      'add:i2@127.0.0.1:2',
      'remove:i1@127.0.0.1:1',
      'add:i3@127.0.0.1:3',
    ]);
    await observer.close();
    observerClient.close();
  });

  it('etcd restarted while instances are registered: they come back by themselves', async function () {
    const prefix = `/dmtp-test/${nameFor(this)}`;
    const writer = open(prefix);
    const regs = [
      (await writer.register({
        service: 'svc',
        instanceId: 'i1',
        address: '127.0.0.1:1',
      })) as EtcdRegistration,
      (await writer.register({
        service: 'svc',
        instanceId: 'i2',
        address: '127.0.0.1:2',
      })) as EtcdRegistration,
    ];
    const observer = open(prefix);
    const rec = recorder();
    observer.watch('svc', rec.listener);
    assert.equal((await observer.instances('svc')).length, 2);
    const oldLeases = regs.map((r) => r.leaseId!);
    const seen = regs.map(() => [] as string[]);
    regs.forEach((r, i) =>
      r.on('lost', () => seen[i].push('lost')).on('reregistered', () => seen[i].push('reregistered')),
    );

    // Down long enough for the leases to be given up (etcd3 declares a lease lost after 2 x TTL without etcd).
    await etcd.kill();
    await eventually("both registrations report 'lost'", () => seen.every((s) => s.includes('lost')), 20_000);
    await etcd.start();

    await eventually(
      "both registrations report 'reregistered'",
      () => seen.every((s) => s.join() === 'lost,reregistered'),
      30_000,
    );
    const client = (raw = new Etcd3({ hosts: etcd.endpoint }));
    for (const [i, r] of regs.entries()) {
      assert.notEqual(r.leaseId, oldLeases[i], 'a new lease');
      const kv = (await client.get(r.key).exec()).kvs[0];
      assert.equal(kv?.lease, r.leaseId, `${r.instance.instanceId} is back on its new lease`);
    }
    // The old leases end (etcd gives restored leases a fresh TTL); the instances, on new leases, stay.
    for (const id of oldLeases) {
      await eventually(
        `old lease ${id} expired`,
        async () => {
          const res = await client.leaseClient.leaseTimeToLive({ ID: id });
          return Number(res.TTL) <= 0;
        },
        20_000,
      );
    }
    const fresh = open(prefix);
    assert.deepEqual(
      (await fresh.instances('svc')).map((i) => i.instanceId),
      ['i1', 'i2'],
    );
    await eventually('the observer shows both', () => observer.cached('svc').length === 2, 20_000);
    const adds = rec.events.filter((e) => e.type === 'add').length;
    const removes = rec.events.filter((e) => e.type === 'remove').length;
    assert.equal(adds - removes, 2, 'the observer never lost nor duplicated an instance');
  });
});
