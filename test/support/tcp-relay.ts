/**
 * A TCP relay in the test's own process, for connections that go silent without a reset (a frozen peer, a
 * network that drops packets): it forwards bytes both ways until `freeze()`, after which the connections open
 * then forward nothing and close nothing, so no FIN or RST ever reaches either side. Connections opened after
 * the freeze are forwarded as usual (a client that reconnects gets through). `partition()` goes further: the
 * connections open now also keep a close to themselves (either side's end never reaches the other, as across a
 * network that lost the route). `cut()` closes the connections open now, and `refuse(true)` closes each new one
 * at once (a peer that is gone), until `refuse(false)`.
 */
import * as net from 'node:net';

export interface TcpRelay {
  /** `127.0.0.1:<port>` to connect to instead of the target. */
  address: string;
  /** Connections opened so far (reconnects show up here). */
  readonly connections: number;
  freeze(): void;
  partition(): void;
  cut(): void;
  refuse(on: boolean): void;
  close(): void;
}

/** A relay to `target` (`host:port`). */
export async function tcpRelay(target: string): Promise<TcpRelay> {
  const cut = target.lastIndexOf(':');
  const [host, port] = [target.slice(0, cut), Number(target.slice(cut + 1))];
  const sockets = new Set<net.Socket>();
  const frozen = new WeakSet<net.Socket>();
  const partitioned = new WeakSet<net.Socket>();
  let connections = 0;
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) return void client.on('error', () => undefined).destroy();
    connections++;
    const upstream = net.connect(port, host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => sockets.delete(s));
    }
    client.on('data', (b) => frozen.has(client) || upstream.write(b));
    upstream.on('data', (b) => frozen.has(client) || client.write(b));
    client.on('close', () => partitioned.has(client) || upstream.destroy());
    upstream.on('close', () => partitioned.has(client) || client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    get connections() {
      return connections;
    },
    freeze: () => {
      for (const s of sockets) frozen.add(s);
    },
    partition: () => {
      for (const s of sockets) {
        frozen.add(s);
        partitioned.add(s);
      }
    },
    cut: () => {
      for (const s of sockets) s.destroy();
    },
    refuse: (on) => {
      refusing = on;
    },
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

export interface MuteServer {
  /** `127.0.0.1:<port>`: takes connections and never answers nor closes them. */
  address: string;
  close(): void;
}

/** A server that accepts every connection and then says nothing (a peer that hangs before its first answer). */
export async function muteServer(): Promise<MuteServer> {
  const held = new Set<net.Socket>();
  const server = net.createServer((s) => held.add(s.on('error', () => undefined)));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    close: () => {
      for (const s of held) s.destroy();
      server.close();
    },
  };
}
