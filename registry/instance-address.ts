/** Looking up one instance of a service by its id, in a registry's live view. */
import type { Registry } from './types';

/**
 * The address of `service`'s instance `instanceId` in the registry's view (its first look at a service starts
 * that service's watch), or undefined when no such instance with an address is registered.
 */
export async function instanceAddress(
  registry: Pick<Registry, 'instances'>,
  service: string,
  instanceId: string,
): Promise<string | undefined> {
  return (await registry.instances(service)).find((i) => i.instanceId === instanceId && i.address)?.address;
}
