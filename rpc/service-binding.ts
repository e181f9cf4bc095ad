/**
 * `serviceBinding(name, definition, handlers)`: the same `ServiceBinding` as the object literal, with each
 * handler typed by its method — the request it receives and the response it must return. `startServer`'s
 * `services` list holds bindings of different services, so a literal there is checked against `any` types: a
 * response missing a field (or with the wrong one) then passes the compiler and fails at run time, when it is
 * encoded. Built through this function, it fails to compile.
 */
import type { Handlers, ServiceBinding, ServiceDefinitionLike } from './server';

export function serviceBinding<Def extends ServiceDefinitionLike>(
  name: string,
  definition: Def,
  handlers: Handlers<Def>,
): ServiceBinding {
  return { name, definition, handlers } as ServiceBinding;
}
