/**
 * A separate process serving the echo service (mux + unary on one grpc.Server; with `--moleculer`, also a
 * Moleculer 0.14 broker over its TCP transporter serving `echo.echo`). Prints `READY <json>` on stdout.
 * Used by the kill-mid-burst test and by bench/rpc-fast.ts; it dies with its parent.
 */
import { startEchoServer } from './mux-echo';

async function main(): Promise<void> {
  const echo = await startEchoServer();
  const info: Record<string, unknown> = { grpc: echo.address };
  if (process.argv.includes('--moleculer')) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { ServiceBroker } = require('moleculer');
    const port = Number(process.argv[process.argv.indexOf('--moleculer') + 1]);
    const broker = new ServiceBroker({
      nodeID: 'echo-server',
      logger: false,
      transporter: { type: 'TCP', options: { udpDiscovery: false, port, urls: [] } },
    });
    broker.createService({ name: 'echo', actions: { echo: (ctx: { params: unknown }) => ctx.params } });
    await broker.start();
    info.moleculerPort = port;
  }
  process.stdout.write(`READY ${JSON.stringify(info)}\n`);
  // Stop when the parent goes away (stdin closes), so nothing outlives the test or bench run.
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0));
}

void main();
