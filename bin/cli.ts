/**
 * The `dmtp` command line: finds the command from the first words of argv, parses its flags, runs it, and
 * turns any failure into one line on stderr with exit code 1. Command groups are loaded only when used, so
 * `dmtp services` does not pay for kafkajs or the coordinator.
 */
import { helpText, parseArgs, UsageError } from './args';
import type { Command, Io } from './command';
import { formatError } from './errors';
import { parseYesNo } from '../common/options';
import { quietIpServerNameWarning } from './tls';

/**
 * A synchronous require on purpose: tsx (the CLI run from source) leaves a dynamic import() as a native ESM
 * import, which does not resolve the extensionless TypeScript paths.
 */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const lazy = (path: string) => require(path);

interface Group {
  summary: string;
  /** A single command (no sub-commands) or a table of sub-commands. */
  load(): Command | Record<string, Command>;
  subcommands?: Record<string, string>;
}

const GROUPS: Record<string, Group> = {
  coordinator: {
    summary: 'run a coordinator (configured by flags and environment)',
    load: () => lazy('./commands/coordinator').coordinator,
  },
  services: {
    summary: 'list service instances from the registry',
    load: () => lazy('./commands/services').services,
  },
  tx: {
    summary: 'inspect, resolve and settle transactions',
    load: () => lazy('./commands/tx').commands,
    subcommands: {
      list: 'list live transactions (--state, --older-than, --service, --instance)',
      show: 'one transaction with its branches, votes, attempts, last error, next retry',
      resolve: 'decide a stuck transaction (--commit | --abort)',
      settle: 'count one branch of a decided transaction done by hand (its participant gone for good)',
    },
  },
  branch: {
    summary: 'find and finish in-doubt branches when their coordinator is gone for good',
    load: () => lazy('./commands/branch').commands,
    subcommands: {
      list: "in-doubt branches (a participant's store, or PostgreSQL's prepared ones) with their coordinator's answer",
      commit: 'commit an in-doubt branch at its participant, as its gone coordinator would have',
      rollback: 'roll an in-doubt branch back at its participant, as its gone coordinator would have',
    },
  },
  events: {
    summary: 'watch Kafka topics, send dead-lettered events back, read consumer lag, list and create topics',
    load: () => lazy('./commands/events').commands,
    subcommands: {
      tail: 'print the messages of a topic as they arrive',
      redrive: 'send dead-lettered events back to the group that gave up on them',
      lag: 'how far a consumer group is behind, per partition',
      topics: 'which topics exist, with their partitions; --create makes the missing ones',
    },
  },
};

function mainHelp(): string {
  const lines = ['Usage: dmtp <command> [options]', '', 'Commands:'];
  for (const [name, g] of Object.entries(GROUPS)) {
    if (!g.subcommands) lines.push(`  ${name.padEnd(20)}${g.summary}`);
    else
      for (const [sub, s] of Object.entries(g.subcommands))
        lines.push(`  ${`${name} ${sub}`.padEnd(20)}${s}`);
  }
  lines.push('', "Every command takes --help; 'dmtp <command> --json' prints JSON for scripts.");
  return lines.join('\n') + '\n';
}

function groupHelp(name: string, g: Group): string {
  const lines = [
    `Usage: dmtp ${name} <command> [options]`,
    '',
    `${g.summary[0].toUpperCase()}${g.summary.slice(1)}.`,
    '',
  ];
  lines.push('Commands:');
  for (const [sub, s] of Object.entries(g.subcommands!)) lines.push(`  ${sub.padEnd(10)}${s}`);
  lines.push('', `See 'dmtp ${name} <command> --help'.`);
  return lines.join('\n') + '\n';
}

const isHelp = (a: string | undefined) => a === '--help' || a === '-h' || a === 'help';

/** Runs the CLI on argv (without `node` and the script) and resolves to the exit code. */
export async function main(argv: string[], io: Io, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  let name = '';
  try {
    const [first, second] = argv;
    if (first === undefined || isHelp(first)) {
      io.out(mainHelp());
      return first === undefined ? 1 : 0;
    }
    const group = GROUPS[first];
    if (!group) throw new UsageError(`unknown command '${first}'`);
    let command: Command;
    let rest: string[];
    if (group.subcommands) {
      if (second === undefined || isHelp(second)) {
        io.out(groupHelp(first, group));
        return second === undefined ? 1 : 0;
      }
      if (!group.subcommands[second]) throw new UsageError(`unknown command '${first} ${second}'`, first);
      command = (group.load() as Record<string, Command>)[second];
      rest = argv.slice(2);
    } else {
      command = group.load() as Command;
      rest = argv.slice(1);
    }
    name = command.spec.name;
    const args = parseArgs(rest, command.spec, env);
    if (args.help) {
      io.out(helpText(command.spec));
      return 0;
    }
    const code = await command.run({ args, io, env });
    return typeof code === 'number' ? code : 0;
  } catch (err) {
    io.err(formatError(err, name) + '\n');
    if (parseYesNo(env.DMTP_DEBUG ?? '') === true && err instanceof Error) {
      // The stack of what went wrong underneath, not of the CLI's wrapper.
      const cause = (err as Error & { cause?: unknown }).cause;
      io.err(`${(cause instanceof Error ? cause : err).stack}\n`);
    }
    return 1;
  }
}

/** The process entry (bin/dmtp.js): runs on process.argv and exits with the command's code. */
export function run(): void {
  quietIpServerNameWarning();
  const io: Io = {
    out: (s) => void process.stdout.write(s),
    err: (s) => void process.stderr.write(s),
  };
  main(process.argv.slice(2), io).then((code) => {
    // Let stdout drain (pipes), then exit even if a library left a handle open.
    process.stdout.write('', () => process.exit(code));
  });
}
