/**
 * The wire rules of a branch reference (BranchRef in proto/dmtp/v1/types.proto), which every participant — in
 * whatever language — follows and the coordinator checks before it holds a branch: a branch id is 1-128 visible
 * ASCII characters (no space, no control character), a resource name 0-64 of them, the address `host:port`.
 * The participant SDK picks its ids from a narrower set (txapi/participant-service.ts).
 */
const VISIBLE_ASCII = /^[\x21-\x7e]*$/;
const ADDRESS_RE = /^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253}):[0-9]{1,5}$/;

export const BRANCH_ID_MAX_CHARS = 128;
export const RESOURCE_MAX_CHARS = 64;

/** 1-128 visible ASCII characters. */
export function isBranchId(s: unknown): boolean {
  return typeof s === 'string' && s.length >= 1 && s.length <= BRANCH_ID_MAX_CHARS && VISIBLE_ASCII.test(s);
}

/** A branch's resource name as it travels: 0-64 visible ASCII characters ('' for a participant's only one). */
export function isResourceName(s: unknown): boolean {
  return typeof s === 'string' && s.length <= RESOURCE_MAX_CHARS && VISIBLE_ASCII.test(s);
}

/** host:port (a name, an IPv4 address or a bracketed IPv6 address; port 0-65535). */
export function isAddress(s: unknown): boolean {
  return typeof s === 'string' && ADDRESS_RE.test(s) && Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535;
}
