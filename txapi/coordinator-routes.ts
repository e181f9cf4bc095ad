/**
 * Where the coordinator answering for an owner's transactions is now, by the registry. With HA, the holder of
 * an owner's transactions registers an `dmtp-coordinator-owner` route under the owner's id (after a takeover
 * that is the taker, not the owner), so the route comes first; else the owner's own `dmtp-coordinator`
 * registration. Initiators (`outcomeOf`) and participants (in-doubt recovery) ask the same way.
 */
import { instanceAddress, type Registry } from '../registry';

export const COORDINATOR_SERVICES = {
  /** Registry name of the coordinators. */
  coordinator: 'dmtp-coordinator',
  /** Registry name of the HA ownership routes (instance id = owner id). */
  owner: 'dmtp-coordinator-owner',
};

/** The address answering for `owner`'s transactions, or undefined when the registry knows none. */
export async function coordinatorAddressOf(
  registry: Pick<Registry, 'instances'>,
  owner: string,
  services: typeof COORDINATOR_SERVICES = COORDINATOR_SERVICES,
): Promise<string | undefined> {
  return (
    (await instanceAddress(registry, services.owner, owner)) ??
    (await instanceAddress(registry, services.coordinator, owner))
  );
}
