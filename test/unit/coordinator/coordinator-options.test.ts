/** What `new Coordinator(options)` refuses before anything starts (no etcd, no sockets). */
import { strict as assert } from 'node:assert';
import { Coordinator } from '../../../coordinator';

describe('Coordinator options', () => {
  it('needs a log: etcd, a file, or a TxLog', () => {
    assert.throws(() => new Coordinator({ id: 'c1' }), /needs options\.etcd or options\.file/);
  });

  it('refuses HA on a file log: the file belongs to one coordinator', () => {
    assert.throws(
      () => new Coordinator({ id: 'c1', file: { path: '/tmp/x.txlog' }, ha: { leaseTtlSeconds: 5 } }),
      /HA needs the shared etcd log/,
    );
    assert.ok(new Coordinator({ id: 'c1', file: { path: '/tmp/x.txlog' }, ha: false }));
    assert.ok(new Coordinator({ id: 'c1', file: { path: '/tmp/x.txlog' } }));
  });

  it('registering in etcd needs etcd, also with a file log', () => {
    assert.throws(
      () => new Coordinator({ id: 'c1', file: { path: '/tmp/x.txlog' }, registry: true }),
      /registry: true registers in etcd/,
    );
  });

  it('refuses an invalid id, naming it', () => {
    assert.throws(() => new Coordinator({ id: 'has:colon', file: { path: '/tmp/x.txlog' } }), /has:colon/);
  });
});
