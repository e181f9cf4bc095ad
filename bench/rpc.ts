/**
 * `npm run bench -- rpc`: the fast path against grpc-js unary and Moleculer (bench/rpc-fast.ts), then calls
 * through the registry against a static address, and join/leave latency (bench/rpc-registry.ts).
 */
import type { Figures } from './results';
import { run as runFast } from './rpc-fast';
import { run as runRegistry } from './rpc-registry';

export async function run(): Promise<Figures> {
  return { ...(await runFast()), ...(await runRegistry()) };
}
