/**
 * Transaction ids (xids) and the metadata keys that carry a transaction across gRPC hops.
 *
 * An xid names its owner, so an initiator can mint one without a round trip and any process can route a
 * call for it to the owning coordinator: `<ownerId>:<ms since epoch, base36>:<random+counter, base36>`.
 * Owner ids are registry instance ids without ':' (see `validateOwnerId`).
 */
import { randomBytes } from 'node:crypto';
import { InvalidArgumentError } from './errors';

/** gRPC metadata keys of the transaction context (request side) and the branch report (response trailers). */
export const MD = {
  /** The global transaction id. */
  xid: 'dmtp-xid',
  /** The owning coordinator's address (host:port), so a participant can reach it without the registry. */
  coordinator: 'dmtp-coordinator',
  /** The transaction's deadline in ms since the Unix epoch. */
  deadline: 'dmtp-tx-deadline-ms',
  /** Response trailer: JSON of the BranchRef a participant enlisted for this call (repeatable). */
  branch: 'dmtp-branch',
  /**
   * Response trailer: why the transaction must roll back, from a participant whose onward call failed in a way
   * that leaves its work at a branch undecidable (the participant's own answer stands; Commit would not).
   */
  rollbackOnly: 'dmtp-rollback-only',
  /**
   * Response trailer, on error and success answers alike: JSON of a branch (as `branch`) holding work of a call
   * that failed — the onward calls of a participant handler that then failed. That work cannot be undone alone:
   * the transaction must not commit with the branch in it, and left out the branch rolls back at its deadline.
   */
  failedBranch: 'dmtp-branch-failed',
  /**
   * Request: JSON array of the branch ids held by the participant calls up this call's chain (A → B → …), so a
   * call that comes back to a branch its own chain holds is refused at once instead of waiting for that
   * branch's lock (held by the caller that waits for it) until the transaction's deadline.
   */
  held: 'dmtp-held-branches',
  /**
   * Response trailer: set by a participant's server middleware on its answer to a call that carried a transaction
   * context and enlisted no branch (a method with no resource): the context was taken. A successful answer with
   * neither this nor a branch came from a server that ignored the transaction (no participant middleware there):
   * its work is not part of the transaction and stays whatever the outcome.
   */
  taken: 'dmtp-tx-taken',
} as const;

const OWNER_RE = /^[A-Za-z0-9._-]{1,64}$/;
const XID_RE = /^([A-Za-z0-9._-]{1,64}):([0-9a-z]{1,12}):([0-9a-z]{1,24})$/;
export const MAX_XID_LENGTH = 102;

export function validateOwnerId(owner: string): void {
  // A non-string would be tested as its text: undefined passed as the id 'undefined'.
  if (typeof owner !== 'string' || !OWNER_RE.test(owner)) {
    throw new InvalidArgumentError(`invalid coordinator id '${owner}': 1-64 characters of [A-Za-z0-9._-]`, {
      details: { owner },
    });
  }
}

let counter = 0;
const processTag = randomBytes(4).readUInt32BE(0).toString(36);

/** Mints a fresh xid owned by `owner`, unique across processes (random tag) and within one (counter). */
export function mintXid(owner: string, now = Date.now()): string {
  validateOwnerId(owner);
  counter = (counter + 1) % 0x7fffffff;
  return `${owner}:${now.toString(36)}:${processTag}${counter.toString(36)}`;
}

export interface ParsedXid {
  owner: string;
  createdAtMs: number;
}

/** Parses and validates an xid; throws InvalidArgumentError naming it when it is malformed. */
export function parseXid(xid: string): ParsedXid {
  const m = typeof xid === 'string' && xid.length <= MAX_XID_LENGTH ? XID_RE.exec(xid) : null;
  if (!m) {
    throw new InvalidArgumentError(`malformed xid '${String(xid).slice(0, 120)}'`, {
      details: { xid: String(xid) },
    });
  }
  return { owner: m[1], createdAtMs: parseInt(m[2], 36) };
}

export function ownerOf(xid: string): string {
  return parseXid(xid).owner;
}
