/** What `new Participant(options)` checks and fills in before anything starts (no store is opened). */
import { strict as assert } from 'node:assert';
import { InvalidArgumentError } from '../../../common';
import { FileBranchStore, Participant, PARTICIPANT_DEFAULTS, type ParticipantOptions } from '../../../txapi';
import { describeConfig } from '../../../txapi/participant-options';
import type { Resource } from '../../../txapi/resource';

function resource(name: string): Resource {
  return {
    name,
    prepare: async () => ({ vote: 'prepared' }),
    commit: async () => ({ committed: true }),
    rollback: async () => undefined,
  };
}

const base = {
  service: 'opts-svc',
  instanceId: 'opts-1',
  address: '127.0.0.1:1',
  store: new FileBranchStore({ path: '/tmp/dmtp-never-opened.branches' }),
};

describe('Participant options', () => {
  it('refuses an invalid instanceId and resource names, naming them', () => {
    const bad = [
      [{ ...base, instanceId: 'has space', resources: [] }, /invalid instanceId 'has space'/],
      [{ ...base, resources: [resource('a|b')] }, /invalid resource name 'a\|b'/],
      [{ ...base, resources: [resource('db'), resource('db')] }, /resource 'db' twice/],
    ] as Array<[ParticipantOptions, RegExp]>;
    for (const [options, message] of bad) {
      assert.throws(
        () => new Participant(options),
        (err: Error) => err instanceof InvalidArgumentError && message.test(err.message),
      );
    }
  });

  it('refuses timers that are not whole numbers and a retention shorter than a transaction may last', () => {
    // Before, a recoveryIntervalMs of 0 or NaN (an unset environment variable) ran recovery rounds back to back.
    const bad = [
      [
        { ...base, resources: [], recoveryIntervalMs: Number.NaN },
        /recoveryIntervalMs must be a whole number .* got NaN/,
      ],
      [{ ...base, resources: [], recoveryIntervalMs: 0 }, /recoveryIntervalMs must be/],
      [{ ...base, resources: [], queryTimeoutMs: 2 ** 31 }, /queryTimeoutMs must be/],
      [
        { ...base, resources: [], retentionMs: 60_000 },
        /retentionMs \(60000\) must be at least the longest transaction \(600000 ms\)/,
      ],
    ] as Array<[ParticipantOptions, RegExp]>;
    for (const [options, message] of bad) {
      assert.throws(
        () => new Participant(options),
        (err: Error) => err instanceof InvalidArgumentError && message.test(err.message),
      );
    }
  });

  it('fills the defaults; an option given as undefined keeps its default', () => {
    const p = new Participant({
      ...base,
      resources: [resource('db')],
      retentionMs: undefined,
      inDoubtAfterMs: 5,
    });
    assert.equal(p.config.retentionMs, PARTICIPANT_DEFAULTS.retentionMs);
    assert.equal(p.config.inDoubtAfterMs, 5);
    assert.equal(p.config.resourceFor('AnyMethod'), 'db', 'the only resource is the default');
  });

  it('with several resources, a call enlists nowhere unless resourceFor says where', () => {
    const two = [resource('db'), resource('cache')];
    assert.equal(new Participant({ ...base, resources: two }).config.resourceFor('Pay'), undefined);
    const routed = new Participant({
      ...base,
      resources: two,
      resourceFor: (m) => (m === 'Pay' ? 'db' : undefined),
    });
    assert.equal(routed.config.resourceFor('Pay'), 'db');
  });

  it('describes the compiled config as plain values for the start-up log', () => {
    const p = new Participant({ ...base, resources: [resource('db')] });
    const d = describeConfig(p.config);
    assert.deepEqual(d.resources, ['db']);
    assert.equal(d.store, 'FileBranchStore');
    assert.equal(d.retentionMs, PARTICIPANT_DEFAULTS.retentionMs);
    assert.doesNotThrow(() => JSON.stringify(d));
    assert.ok(Object.values(d).every((v) => typeof v !== 'function'));
  });
  it('with a registry, in-doubt recovery asks the HA owner route first, else the owner itself', async () => {
    // A FAKE registry (pure logic): just the instance lists the look-up reads.
    const listed: Record<string, { instanceId: string; address: string }[]> = {
      'dmtp-coordinator-owner': [{ instanceId: 'c1', address: '10.0.0.2:7700' }],
      'dmtp-coordinator': [
        { instanceId: 'c1', address: '10.0.0.1:7700' },
        { instanceId: 'c2', address: '10.0.0.3:7700' },
      ],
    };
    const registry = { instances: async (s: string) => (listed[s] ?? []) as never[] };
    const p = new Participant({ ...base, resources: [resource('db')], registry });
    assert.equal(await p.config.coordinatorAddressFor!('c1'), '10.0.0.2:7700', 'the taker, after a takeover');
    assert.equal(await p.config.coordinatorAddressFor!('c2'), '10.0.0.3:7700');
    assert.equal(await p.config.coordinatorAddressFor!('gone'), undefined);
    const own = async () => '10.9.9.9:1';
    const q = new Participant({ ...base, resources: [resource('db')], registry, coordinatorAddressFor: own });
    assert.equal(q.config.coordinatorAddressFor, own, 'an explicit look-up wins');
    const r = new Participant({ ...base, resources: [resource('db')] });
    assert.equal(r.config.coordinatorAddressFor, undefined, 'no registry: the recorded address only');
    assert.equal(describeConfig(r.config).coordinatorLookup, 'recorded address only');
  });
});
