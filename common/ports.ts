/**
 * A free TCP port for a server that must know its address before it listens (a participant's address is in its
 * branches, so a restarted instance comes back on the same one; a test or the demo starts a child process on it).
 *
 * Asking the OS for port 0 gives a port from its ephemeral range — the range outgoing connections take their
 * local ports from — so between the pick and the child's bind, a connection anyone opens (a Kafka or etcd
 * client) may take it: the child then fails with EADDRINUSE (seen in CI, in the demo). Ports are therefore
 * picked at random outside that range — above it (Linux's default ends at 60999), where DMTP's own fixed ports
 * are not either, else just below it — checked free by binding them; the OS's choice is only the fallback.
 */
import { readFileSync } from 'node:fs';
import * as net from 'node:net';

const TRIES = 50;

/** Where to pick from: [low, high), outside the OS's ephemeral range (Linux's, read once; its default if unknown). */
function pickRange(): [number, number] {
  let [first, last] = [32_768, 60_999];
  try {
    const m = /^\s*(\d+)\s+(\d+)/.exec(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8'));
    if (m) [first, last] = [Number(m[1]), Number(m[2])];
  } catch {
    // not Linux: its default range
  }
  if (65_536 - (last + 1) >= 1_000) return [last + 1, 65_536];
  return [Math.max(1_024, first - 10_000), first];
}

const [LOW, HIGH] = pickRange();
/** Ports this process handed out: not handed out again (their server may not be listening yet). */
const given = new Set<number>();

function bindable(port: number, host: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(undefined));
    s.listen(port, host, () => {
      const bound = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(bound));
    });
  });
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let i = 0; i < TRIES; i++) {
    const pick = LOW + Math.floor(Math.random() * (HIGH - LOW));
    if (given.has(pick)) continue;
    const port = await bindable(pick, host);
    if (port !== undefined) {
      given.add(port);
      return port;
    }
  }
  const port = await bindable(0, host);
  if (port === undefined) throw new Error(`no free TCP port on ${host}`);
  return port;
}
