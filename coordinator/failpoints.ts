/**
 * Named crash points for fault tests. Inert unless DMTP_FAILPOINT (or the `spec` option) names one:
 * `name[:exit|:hang][:N]` — at the N-th time (default 1st) the point is reached, the process exits
 * (`process.exit(137)`, like kill -9 as far as the log is concerned) or hangs there for ever.
 */
import { logger } from '../common';

export const FAILPOINTS = [
  /** Every branch voted; the decision is not written yet. */
  'after-prepare-before-decision',
  /** The COMMITTING record is durable; no phase-2 message is sent yet. */
  'after-decision-before-phase2',
  /** At least one branch acknowledged phase 2, not all. */
  'mid-phase2',
  /** The COMMITTING record (with events) is durable; the relay has not published. */
  'after-decision-before-relay',
  /** A one-phase commit's only branch answered committed; the coordinator has recorded nothing of it yet. */
  'after-one-phase-commit',
] as const;
export type FailpointName = (typeof FAILPOINTS)[number];

export interface FailpointSpec {
  name: FailpointName;
  action: 'exit' | 'hang';
  /** Fires on this hit (1-based). */
  at: number;
}

export function parseFailpoint(spec: string | undefined): FailpointSpec | undefined {
  if (!spec) return undefined;
  const [name, action = 'exit', at = '1'] = spec.split(':');
  if (!(FAILPOINTS as readonly string[]).includes(name)) {
    throw new Error(`unknown fail-point '${name}' (known: ${FAILPOINTS.join(', ')})`);
  }
  if (action !== 'exit' && action !== 'hang')
    throw new Error(`fail-point action must be exit or hang, not '${action}'`);
  const n = Number(at);
  if (!Number.isInteger(n) || n < 1)
    throw new Error(`fail-point hit count must be a positive integer, not '${at}'`);
  return { name: name as FailpointName, action, at: n };
}

export class Failpoints {
  private hits = 0;
  private readonly log = logger('coordinator:failpoint');

  constructor(readonly spec?: FailpointSpec) {}

  static fromEnv(env: NodeJS.ProcessEnv = process.env): Failpoints {
    return new Failpoints(parseFailpoint(env.DMTP_FAILPOINT));
  }

  /** Cheap check for the hot path: `if (fp.armed(name)) await fp.hit(name)`. */
  armed(name: FailpointName): boolean {
    return this.spec?.name === name;
  }

  /** Resolves at once unless this point fires; then exits the process or never resolves. */
  hit(name: FailpointName): Promise<void> {
    if (this.spec?.name !== name || ++this.hits !== this.spec.at) return Promise.resolve();
    this.log.error(`fail-point ${name} fired: ${this.spec.action}`);
    if (this.spec.action === 'exit') process.exit(137);
    return new Promise<void>(() => undefined);
  }
}
