/**
 * `dmtp services [name]`: the live instances in the registry, all services or one; with `--health`, what each
 * instance answers on the gRPC health protocol for its service (asked concurrently, each within --timeout).
 */
import { checkHealth, type HealthAnswer } from '../../rpc/health';
import { COORDINATOR_SERVICES } from '../../txapi/coordinator-routes';
import { formatDuration } from '../args';
import { endpointsOf, ETCD_FLAGS, JSON_FLAG, TIMEOUT_FLAG, writeJson, type Command } from '../command';
import { readInstances } from '../etcd';
import { renderTable } from '../table';
import { envTls } from '../tls';

export const services: Command = {
  spec: {
    name: 'services',
    summary: 'List the service instances registered in etcd (all services, or the one named).',
    positionals: [{ name: 'name', description: 'only the instances of this service' }],
    flags: {
      health: {
        type: 'boolean',
        description:
          "ask each instance's gRPC health check for its service: SERVING, NOT_SERVING, UNKNOWN, NOT_FOUND, UNIMPLEMENTED or UNREACHABLE",
      },
      ...JSON_FLAG,
      ...ETCD_FLAGS,
      ...TIMEOUT_FLAG,
    },
    examples: [
      'dmtp services',
      'dmtp services inventory --health',
      'dmtp services inventory --json',
      'dmtp services --etcd http://10.0.0.7:2379 --prefix /staging',
    ],
  },
  async run({ args, io }) {
    const name = args.positionals[0];
    const prefix = String(args.flags.prefix);
    const timeoutMs = Number(args.flags.timeout);
    const found = await readInstances({ endpoints: endpointsOf(args), prefix, timeoutMs }, name);
    const tls = args.flags.health ? envTls() : undefined;
    const instances: ((typeof found)[number] & { health?: HealthAnswer })[] = args.flags.health
      ? await Promise.all(
          found.map(async (i) => ({
            ...i,
            // An HA ownership route points at the coordinator answering for that owner now, which reports its
            // health as a coordinator: asked under the route's own name it answered NOT_FOUND.
            health: await checkHealth(
              i.address,
              i.service === COORDINATOR_SERVICES.owner ? COORDINATOR_SERVICES.coordinator : i.service,
              timeoutMs,
              tls,
            ),
          })),
        )
      : found;
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
        [
          'service',
          'instance',
          'address',
          ...(args.flags.health ? ['health'] : []),
          'version',
          'zone',
          'weight',
          'up',
          'metadata',
        ],
        instances.map((i) => [
          i.service,
          i.instanceId,
          i.address,
          ...(args.flags.health ? [i.health ?? ''] : []),
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
