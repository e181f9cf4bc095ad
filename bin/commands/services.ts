/** `dmtp services [name]`: the live instances in the registry, all services or one. */
import { formatDuration } from '../args';
import { endpointsOf, ETCD_FLAGS, JSON_FLAG, TIMEOUT_FLAG, writeJson, type Command } from '../command';
import { readInstances } from '../etcd';
import { renderTable } from '../table';

export const services: Command = {
  spec: {
    name: 'services',
    summary: 'List the service instances registered in etcd (all services, or the one named).',
    positionals: [{ name: 'name', description: 'only the instances of this service' }],
    flags: { ...JSON_FLAG, ...ETCD_FLAGS, ...TIMEOUT_FLAG },
    examples: [
      'dmtp services',
      'dmtp services inventory --json',
      'dmtp services --etcd http://10.0.0.7:2379 --prefix /staging',
    ],
  },
  async run({ args, io }) {
    const name = args.positionals[0];
    const prefix = String(args.flags.prefix);
    const instances = await readInstances(
      { endpoints: endpointsOf(args), prefix, timeoutMs: Number(args.flags.timeout) },
      name,
    );
    if (args.flags.json) return writeJson(io, instances);
    if (instances.length === 0) {
      io.out(
        name ? `no instances of '${name}' under ${prefix}\n` : `no instances registered under ${prefix}\n`,
      );
      return;
    }
    const now = Date.now();
    io.out(
      renderTable(
        ['service', 'instance', 'address', 'version', 'zone', 'weight', 'up', 'metadata'],
        instances.map((i) => [
          i.service,
          i.instanceId,
          i.address,
          i.version,
          i.zone,
          i.weight,
          formatDuration(now - i.startedAt),
          Object.entries(i.metadata)
            .map(([k, v]) => `${k}=${v}`)
            .join(','),
        ]),
      ),
    );
  },
};
