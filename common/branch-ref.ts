/**
 * The wire rules of a branch reference (BranchRef in proto/dmtp/v1/types.proto), shared by the coordinator that
 * stores references and the participants that own them: what one side accepts the other accepts too, so the
 * coordinator never holds a branch whose participant would refuse every phase-2 message for it.
 */
const BRANCH_ID_RE = /^[A-Za-z0-9._@-]{1,128}$/;
const RESOURCE_RE = /^[A-Za-z0-9._-]{0,64}$/;
const ADDRESS_RE = /^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253}):[0-9]{1,5}$/;

/** What `isBranchId` accepts, for error messages. */
export const BRANCH_ID_RULE = '1-128 of A-Z a-z 0-9 . _ @ -';
/** What `isResourceName` accepts, for error messages. */
export const RESOURCE_RULE = '0-64 of A-Z a-z 0-9 . _ -';

export function isBranchId(s: unknown): boolean {
  return typeof s === 'string' && BRANCH_ID_RE.test(s);
}

/** A branch's resource name as it travels ('' when the participant has a single unnamed one). */
export function isResourceName(s: unknown): boolean {
  return typeof s === 'string' && RESOURCE_RE.test(s);
}

/** host:port (a name, an IPv4 address or a bracketed IPv6 address; port 0-65535). */
export function isAddress(s: unknown): boolean {
  return typeof s === 'string' && ADDRESS_RE.test(s) && Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535;
}
