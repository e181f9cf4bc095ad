/**
 * A child process serving the echo service (test/support/echo-service.ts) on 127.0.0.1, registered in etcd:
 * for tests that `kill -9` a provider and for the rpc benchmarks, which keep servers out of the measuring
 * process. Started with `spawnEchoProcess()`; driven over the IPC channel:
 *
 *   → { type: 'join', label }            starts one more instance; ← 'joined' once its first call arrived
 *   → { type: 'leave', label, waitMs }   deregisters it, keeps serving `waitMs`; ← 'left' with the last call's time
 *   → { type: 'stop' }                   stops everything and exits
 *   ← { type: 'ready', addresses }       once the initial instances are serving and registered
 *
 * Times are `performance.timeOrigin + performance.now()` (ms since the epoch, sub-ms), all taken in this process.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { EtcdRegistry, type Registration } from '../../registry';
import { RpcServer } from '../../rpc/server';
import { EchoService, echoHandlers } from './echo-service';
import { ETCD_ENDPOINTS } from './env';
import { forkExecArgv } from './node-entry';

export interface EchoProcessConfig {
  prefix: string;
  service: string;
  /** Instance ids (and answer labels) of the instances started at once. */
  labels: string[];
  leaseTtlSeconds?: number;
}

export type EchoProcessMessage =
  | { type: 'ready'; addresses: Record<string, string> }
  | { type: 'joined'; label: string; registerAt: number; registeredAt: number; firstCallAt: number }
  | { type: 'left'; label: string; deregisterAt: number; lastCallAt: number };

const now = () => performance.timeOrigin + performance.now();

interface Served {
  server: RpcServer;
  registration?: Registration;
  firstCallAt: number;
  lastCallAt: number;
  onFirst?: () => void;
}

async function main(config: EchoProcessConfig): Promise<void> {
  const registry = new EtcdRegistry({
    hosts: ETCD_ENDPOINTS,
    prefix: config.prefix,
    leaseTtlSeconds: config.leaseTtlSeconds ?? 2,
  });
  const served = new Map<string, Served>();
  const send = (m: EchoProcessMessage) => process.send?.(m);

  const start = async (label: string, register: boolean): Promise<Served> => {
    const s: Served = { firstCallAt: 0, lastCallAt: 0 } as Served;
    const onCall = () => {
      const t = now();
      s.lastCallAt = t;
      if (s.firstCallAt === 0) {
        s.firstCallAt = t;
        s.onFirst?.();
      }
    };
    // joiners register by hand, so that register() alone is timed (not the bind before it)
    s.server = new RpcServer({
      registry: register ? registry : undefined,
      services: [{ name: config.service, definition: EchoService, handlers: echoHandlers(label, onCall) }],
      instance: { instanceId: label },
      drainDelayMs: 100,
      gracePeriodMs: 2_000,
    });
    served.set(label, s);
    await s.server.start();
    return s;
  };

  await Promise.all(config.labels.map((l) => start(l, true)));
  send({ type: 'ready', addresses: Object.fromEntries([...served].map(([l, s]) => [l, s.server.address])) });

  process.on('message', (msg: { type: string; label?: string; waitMs?: number }) => {
    void (async () => {
      if (msg.type === 'join' && msg.label) {
        const s = await start(msg.label, false);
        const first = new Promise<void>((r) => (s.onFirst = r));
        const registerAt = now();
        s.registration = await registry.register({
          service: config.service,
          instanceId: msg.label,
          address: s.server.address,
        });
        const registeredAt = now();
        await first;
        send({ type: 'joined', label: msg.label, registerAt, registeredAt, firstCallAt: s.firstCallAt });
      } else if (msg.type === 'leave' && msg.label) {
        const s = served.get(msg.label);
        if (!s) return;
        served.delete(msg.label);
        const deregisterAt = now();
        await Promise.all(
          [...s.server.registered, ...(s.registration ? [s.registration] : [])].map((r) => r.deregister()),
        );
        await new Promise((r) => setTimeout(r, msg.waitMs ?? 300));
        send({ type: 'left', label: msg.label, deregisterAt, lastCallAt: s.lastCallAt });
        await s.server.stop();
      } else if (msg.type === 'stop') {
        await Promise.all([...served.values()].map((s) => s.registration?.deregister()));
        await Promise.all([...served.values()].map((s) => s.server.stop()));
        await registry.close();
        process.disconnect?.();
        process.exit(0);
      }
    })();
  });
  process.on('disconnect', () => process.exit(0)); // the parent went away: never outlive it
}

/** Starts the echo process with `config`; resolves with the child and its instances' addresses once ready. */
export function spawnEchoProcess(
  config: EchoProcessConfig,
): Promise<{ child: ChildProcess; addresses: Record<string, string> }> {
  const child = fork(__filename, [JSON.stringify(config)], {
    execArgv: forkExecArgv(),
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return new Promise((resolve, reject) => {
    const onExit = (code: number | null) => reject(new Error(`echo process exited (${code}) before ready`));
    child.once('exit', onExit);
    child.once('error', reject);
    child.on('message', (m: EchoProcessMessage) => {
      if (m.type === 'ready') {
        child.off('exit', onExit);
        resolve({ child, addresses: m.addresses });
      }
    });
  });
}

/**
 * Waits for the next message of `type` from the child; rejects if none came within `timeoutMs` or the child
 * exited first (a lost message must fail the caller, not hang it).
 */
export function nextMessage<T extends EchoProcessMessage['type']>(
  child: ChildProcess,
  type: T,
  timeoutMs = 30_000,
): Promise<Extract<EchoProcessMessage, { type: T }>> {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      child.off('message', on);
      child.off('exit', onExit);
    };
    const on = (m: EchoProcessMessage) => {
      if (m.type === type) {
        done();
        resolve(m as Extract<EchoProcessMessage, { type: T }>);
      }
    };
    const onExit = (code: number | null, signal: string | null) => {
      done();
      reject(new Error(`echo process exited (${code ?? signal}) before its '${type}' message`));
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`echo process: no '${type}' message within ${timeoutMs} ms`));
    }, timeoutMs);
    child.on('message', on);
    child.once('exit', onExit);
  });
}

/** Asks the child to stop and waits for it to exit (SIGKILL after `ms`). */
export async function stopEchoProcess(child: ChildProcess, ms = 5_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  if (child.connected) child.send({ type: 'stop' });
  const t = setTimeout(() => child.kill('SIGKILL'), ms);
  await exited;
  clearTimeout(t);
}

if (require.main === module) void main(JSON.parse(process.argv[2]) as EchoProcessConfig);
