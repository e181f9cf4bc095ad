/**
 * What a participant serves (participant-service.ts): the coordinator's three methods and the operator's
 * ListBranches, all `unlimited` — a server at its maxConcurrentCalls still finishes admitted branches.
 */
import { strict as assert } from 'node:assert';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  defineResource,
  FileBranchStore,
  Participant,
  participantBinding,
  participantMethods,
} from '../../../txapi';

describe('txapi participant binding', () => {
  const p = new Participant({
    service: 'shop',
    instanceId: 'shop-1',
    address: '127.0.0.1:1',
    store: new FileBranchStore({ path: path.join(os.tmpdir(), 'never-opened.jsonl') }), // never opened here
    resources: [
      defineResource<undefined>({
        name: 'db',
        prepare: async () => ({ vote: 'prepared' }),
        commit: async () => undefined,
        rollback: async () => undefined,
      }),
    ],
  });

  it('serves Prepare, Commit, Rollback and ListBranches, every one unlimited', () => {
    const paths = [
      '/dmtp.v1.Participant/Prepare',
      '/dmtp.v1.Participant/Commit',
      '/dmtp.v1.Participant/Rollback',
      '/dmtp.v1.ParticipantAdmin/ListBranches',
    ];
    const methods = participantMethods(p);
    assert.deepEqual(
      methods.map((m) => [m.path, m.unlimited]),
      paths.map((m) => [m, true]),
    );
    const binding = participantBinding(p);
    assert.equal(binding.name, 'shop');
    assert.equal(binding.unlimited, true);
    assert.deepEqual(
      Object.values(binding.definition).map((d) => d.path),
      paths,
    );
    assert.deepEqual(Object.keys(binding.handlers).sort(), ['commit', 'listBranches', 'prepare', 'rollback']);
  });
});
