/**
 * What the CLI prints when a command fails: exactly one line on stderr, `dmtp <command>: <what went wrong>`,
 * and exit code 1 — never a stack trace. Failures of etcd, the coordinator and Kafka are turned into a
 * CliError that names what could not be reached, where; anything else keeps its own message.
 */
import { status } from '@grpc/grpc-js';
import { oneLine } from '../common/errors';
import { etcdUnreachable } from '../registry/etcd-channel';
import { UsageError } from './args';

export class CliError extends Error {
  override readonly name = 'CliError';
}

interface GrpcLike {
  code?: unknown;
  details?: unknown;
  message?: unknown;
}

function isGrpcError(err: unknown): err is { code: status; details: string } {
  const e = err as GrpcLike;
  return typeof e?.code === 'number' && e.code in status && typeof e.details === 'string';
}

/**
 * A gRPC error from the coordinator at `address`, as an operator should read it: unreachable and timed out
 * say so; a refusal (FAILED_PRECONDITION) and an unknown xid (NOT_FOUND) keep the coordinator's own words.
 */
export function coordinatorError(err: unknown, address: string, timeoutMs: number): Error {
  return peerError('coordinator', err, address, timeoutMs);
}

/** The same for a participant instance (`dmtp branch`): its refusals and unknown branches in its own words. */
export function participantError(err: unknown, address: string, timeoutMs: number): Error {
  return peerError('participant', err, address, timeoutMs);
}

function peerError(peer: string, err: unknown, address: string, timeoutMs: number): Error {
  if (!isGrpcError(err)) return err instanceof Error ? err : new Error(String(err));
  switch (err.code) {
    case status.UNAVAILABLE:
      return new CliError(`cannot reach the ${peer} at ${address} (${oneLine(err.details)})`);
    case status.DEADLINE_EXCEEDED:
      return new CliError(`the ${peer} at ${address} did not answer within ${timeoutMs} ms`);
    case status.FAILED_PRECONDITION:
      // The state names as the CLI shows them (ABORTING, not TX_STATE_ABORTING).
      return new CliError(`refused: ${err.details.replace(/\bTX_STATE_(\w+)/g, '$1')}`);
    case status.NOT_FOUND:
    case status.INVALID_ARGUMENT:
      return new CliError(err.details);
    default:
      return new CliError(`${peer} at ${address}: ${status[err.code]}: ${oneLine(err.details)}`);
  }
}

/** Any failure talking to etcd: the CLI only reads, so every one of them means "etcd is not answering". */
export function etcdError(err: unknown, endpoints: string[]): CliError {
  return new CliError(etcdUnreachable(err, endpoints));
}

/** The one line printed for a failed command (without the trailing newline). */
export function formatError(err: unknown, command = ''): string {
  const prefix = command ? `dmtp ${command}: ` : 'dmtp: ';
  if (err instanceof UsageError) {
    const cmd = err.command || command;
    return `${cmd ? `dmtp ${cmd}: ` : 'dmtp: '}${err.message} (see 'dmtp ${cmd ? cmd + ' ' : ''}--help')`;
  }
  if (isGrpcError(err)) return prefix + `${status[err.code]}: ${oneLine(err.details)}`;
  if (err instanceof Error) return prefix + oneLine(err.message || err.name);
  return prefix + oneLine(String(err));
}

/**
 * Asks several servers at once (`tx list`'s coordinators, `branch list`'s participant instances): one that does
 * not answer costs its own timeout, not the others' answers. None answering is one error naming each (the first
 * alone would hide the others' faults; a lone one is thrown as it is), `<none>: <cause>; <cause>`. Otherwise the
 * answers, in the order asked, and a cause per server that did not answer — `<label><what went wrong>` — for the
 * command to print on stderr beside what the others hold (and exit 1: a partial answer).
 */
export async function askEvery<T>(
  asks: ReadonlyArray<{ label?: string; answer: () => Promise<T> }>,
  none: string,
): Promise<{ answers: T[]; unanswered: string[] }> {
  const settled = await Promise.allSettled(asks.map((a) => a.answer()));
  const answers: T[] = [];
  const failed: unknown[] = [];
  const unanswered: string[] = [];
  settled.forEach((s, i) => {
    if (s.status === 'fulfilled') {
      answers.push(s.value);
      return;
    }
    failed.push(s.reason);
    unanswered.push(`${asks[i].label ?? ''}${formatError(s.reason).replace(/^dmtp: /, '')}`);
  });
  if (answers.length === 0 && failed.length > 0) {
    if (failed.length === 1) throw failed[0];
    throw new CliError(`${none}: ${unanswered.join('; ')}`);
  }
  return { answers, unanswered };
}
