import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import * as net from 'node:net';
import { freePort } from '../../../common';

describe('common/ports: freePort', () => {
  it('gives a free port below the ephemeral range, where no outgoing connection takes it before the bind', async () => {
    // Before, port 0's pick came from the ephemeral range: a connection opened meanwhile could take it, and the
    // child meant to listen there failed with EADDRINUSE (the demo, in CI).
    const [first, last] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/);
    const ephemeral = [Number(first), Number(last)];
    const ports = await Promise.all(Array.from({ length: 5 }, () => freePort()));
    for (const port of ports) {
      assert.ok(Number.isInteger(port) && (port > ephemeral[1] || port < ephemeral[0]), `port ${port}`);
      const s = net.createServer();
      await new Promise<void>((resolve, reject) =>
        s.once('error', reject).listen(port, '127.0.0.1', resolve),
      );
      await new Promise((resolve) => s.close(resolve));
    }
  });
});
