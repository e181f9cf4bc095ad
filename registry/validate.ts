/**
 * Input checks for the registry: service names and instance ids (what becomes a key segment), the spec an
 * instance registers with, and the JSON value read back from etcd. Bad input from a caller throws
 * `InvalidArgumentError`; a bad value found in etcd (foreign or malformed) is skipped with one warning per key
 * by `ValueDecoder`, never a crash, because the registry must keep serving the valid instances beside it.
 */
import { FailedPreconditionError, InvalidArgumentError, type Logger } from '../common';
import type { InstanceSpec, InstanceUpdate, ServiceInstance } from './types';

/** Longest service name or instance id, in characters. */
export const MAX_NAME_LENGTH = 128;
/** Longest address (host:port), in characters. */
export const MAX_ADDRESS_LENGTH = 256;
/**
 * Largest instance value (the JSON under an instance's key, metadata included), in bytes: 64 KiB. A page of a
 * service's read holds up to `readPageKeys` values and grpc-js refuses a response over 4 MiB, and etcd refuses
 * a request over 1.5 MiB (its default `--max-request-bytes`), so without a cap a few instances with large
 * metadata made the service unreadable for everyone. Registration refuses a larger value; a reader skips one
 * written by someone else (an older version, a foreign writer) instead of failing the service's discovery.
 */
export const MAX_VALUE_BYTES = 64 * 1024;

// C0 controls, DEL and C1 controls: they break logs, keys printed in tools, and gRPC metadata.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

function checkName(kind: 'service name' | 'instance id', value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new InvalidArgumentError(`${kind} must be a non-empty string`, {
      details: { [kind]: String(value) },
    });
  }
  if (value.length > MAX_NAME_LENGTH) {
    throw new InvalidArgumentError(
      `${kind} '${value.slice(0, 32)}…' is ${value.length} characters long; the limit is ${MAX_NAME_LENGTH}`,
      { details: { [kind]: value.slice(0, MAX_NAME_LENGTH) } },
    );
  }
  if (value.includes('/')) {
    throw new InvalidArgumentError(
      `${kind} '${value}' must not contain '/' (it is a segment of an etcd key)`,
      {
        details: { [kind]: value },
      },
    );
  }
  if (CONTROL.test(value)) {
    throw new InvalidArgumentError(`${kind} ${JSON.stringify(value)} must not contain control characters`, {
      details: { [kind]: value },
    });
  }
  return value;
}

/** Throws InvalidArgumentError unless `name` is 1-128 characters, without '/' or control characters. */
export function validateServiceName(name: unknown): string {
  return checkName('service name', name);
}

/** Same rules as service names. */
export function validateInstanceId(id: unknown): string {
  return checkName('instance id', id);
}

function invalid(service: string, message: string): InvalidArgumentError {
  return new InvalidArgumentError(`invalid registration of '${service}': ${message}`, {
    details: { service },
  });
}

/**
 * Checks a registration request and fills its defaults (version '', zone '', weight 1, metadata {}).
 * The instance id must already be chosen (the registry generates one when the caller gave none). The encoded
 * value (`encodeInstance`) must fit in `MAX_VALUE_BYTES`: a larger one is refused here, before anything is
 * written, rather than by etcd (whose refusal reads as an outage and trips the client's circuit breaker).
 */
export function validateSpec(
  spec: InstanceSpec & { instanceId: string },
  startedAt: number,
): ServiceInstance {
  if (spec === null || typeof spec !== 'object')
    throw new InvalidArgumentError('instance spec must be an object');
  const service = validateServiceName(spec.service);
  const instanceId = validateInstanceId(spec.instanceId);
  const { address, version = '', zone = '', weight = 1, metadata = {} } = spec;
  if (typeof address !== 'string' || address.length === 0 || address.length > MAX_ADDRESS_LENGTH) {
    throw invalid(service, `address must be a host:port string of 1-${MAX_ADDRESS_LENGTH} characters`);
  }
  if (CONTROL.test(address) || /\s/.test(address))
    throw invalid(service, `address ${JSON.stringify(address)}`);
  if (typeof version !== 'string') throw invalid(service, 'version must be a string');
  if (typeof zone !== 'string') throw invalid(service, 'zone must be a string');
  if (typeof weight !== 'number' || !Number.isFinite(weight) || weight < 0) {
    throw invalid(service, `weight must be a finite number >= 0, got ${String(weight)}`);
  }
  if (metadata === null || typeof metadata !== 'object' || Array.isArray(metadata)) {
    throw invalid(service, 'metadata must be an object of strings');
  }
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') throw invalid(service, `metadata '${k}' must be a string`);
  }
  const instance = {
    service,
    instanceId,
    address,
    version,
    zone,
    weight,
    metadata: { ...metadata },
    startedAt,
  };
  const bytes = Buffer.byteLength(encodeInstance(instance));
  if (bytes > MAX_VALUE_BYTES) {
    throw new InvalidArgumentError(
      `invalid registration of '${service}/${instanceId}': its value is ${bytes} bytes; the limit is ` +
        `${MAX_VALUE_BYTES} (MAX_VALUE_BYTES) — keep large data out of the metadata`,
      { details: { service, instanceId, bytes, limit: MAX_VALUE_BYTES } },
    );
  }
  return instance;
}

/** The error of `update()` on a registration already deregistered. */
export function deregistered(instance: ServiceInstance): FailedPreconditionError {
  const { service, instanceId } = instance;
  return new FailedPreconditionError(`'${service}/${instanceId}' is deregistered: nothing to update`, {
    details: { service, instanceId },
  });
}

/**
 * `instance` with `change` applied, validated as a registration is; throws InvalidArgumentError naming a field
 * `update()` cannot change.
 */
export function updatedInstance(instance: ServiceInstance, change: InstanceUpdate): ServiceInstance {
  const { service, instanceId } = instance;
  if (change === null || typeof change !== 'object' || Array.isArray(change)) {
    throw new InvalidArgumentError(`update of '${service}/${instanceId}': give { weight?, metadata? }`, {
      details: { service, instanceId },
    });
  }
  const other = Object.keys(change).filter((k) => k !== 'weight' && k !== 'metadata');
  if (other.length > 0) {
    throw new InvalidArgumentError(
      `update of '${service}/${instanceId}' changes weight and metadata only, not ${other.join(', ')} ` +
        '(register the instance again for that)',
      { details: { service, instanceId, fields: other.join(',') } },
    );
  }
  const { startedAt, ...spec } = instance;
  return validateSpec(
    {
      ...spec,
      ...(change.weight !== undefined ? { weight: change.weight } : {}),
      ...(change.metadata !== undefined ? { metadata: change.metadata } : {}),
    },
    startedAt,
  );
}

/** The JSON stored under an instance's key (service and instance id live in the key, not the value). */
export function encodeInstance(instance: ServiceInstance): string {
  const { address, version, zone, weight, metadata, startedAt } = instance;
  return JSON.stringify({ address, version, zone, weight, metadata, startedAt });
}

/**
 * Parses and validates a value read under `<prefix>/services/<service>/<instanceId>`. Throws
 * InvalidArgumentError saying what is wrong. Fields other than `address` and `startedAt` may be missing
 * (defaults as at registration); unknown extra fields are ignored, so a newer writer stays readable. A value
 * over `MAX_VALUE_BYTES` is refused without being parsed.
 */
export function decodeInstance(service: string, instanceId: string, raw: string): ServiceInstance {
  validateServiceName(service);
  validateInstanceId(instanceId);
  // Checked on the raw value, before parsing it: a value over the cap never came from a current writer.
  const bytes = Buffer.byteLength(raw);
  if (bytes > MAX_VALUE_BYTES) {
    throw new InvalidArgumentError(`value is ${bytes} bytes; the limit is ${MAX_VALUE_BYTES}`, {
      details: { service, instanceId, bytes, limit: MAX_VALUE_BYTES },
    });
  }
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new InvalidArgumentError('value is not JSON');
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new InvalidArgumentError('value is not an object');
  const o = v as Record<string, unknown>;
  if (typeof o.startedAt !== 'number' || !Number.isFinite(o.startedAt)) {
    throw new InvalidArgumentError('startedAt must be a number');
  }
  return validateSpec(
    {
      service,
      instanceId,
      address: o.address as string,
      version: (o.version ?? '') as string,
      zone: (o.zone ?? '') as string,
      weight: (o.weight ?? 1) as number,
      metadata: (o.metadata ?? {}) as Record<string, string>,
    },
    o.startedAt,
  );
}

/**
 * Decodes values found under the prefix, warning ONCE per key about a foreign or malformed one (a watch sees
 * the same bad key on every re-read; the log should say it once). A key that later holds a valid value, or
 * is deleted, is forgotten, so a new bad value there is reported again.
 */
export class ValueDecoder {
  private readonly warned = new Set<string>();

  constructor(private readonly log: Logger) {}

  /** The instance, or undefined (and one warning) when the key or value is not a valid registration. */
  decode(
    key: string,
    service: string | undefined,
    instanceId: string | undefined,
    raw: string,
  ): ServiceInstance | undefined {
    try {
      if (service === undefined || instanceId === undefined) {
        throw new InvalidArgumentError('key is not <prefix>/services/<service>/<instanceId>');
      }
      const instance = decodeInstance(service, instanceId, raw);
      this.warned.delete(key);
      return instance;
    } catch (err) {
      if (!this.warned.has(key)) {
        this.warned.add(key);
        this.log.warn('skipping a foreign or malformed value under the registry prefix', {
          key,
          reason: err instanceof Error ? err.message : String(err),
          bytes: Buffer.byteLength(raw),
        });
      }
      return undefined;
    }
  }

  /** The key was deleted: a future bad value under it deserves a new warning. */
  forget(key: string): void {
    this.warned.delete(key);
  }
}
