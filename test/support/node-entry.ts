/**
 * How a child process runs a TypeScript entry of this tree: through tsx when this code runs from the sources (the
 * tests), as the compiled JavaScript beside it when it runs compiled — the benchmarks run from `.dmtp/bench-dist`
 * (`tsconfig.bench.json`), as an installed package runs from `dist/`, without the TypeScript loader (tsx keeps
 * ~35 MB of its own in every process).
 */
const COMPILED = __filename.endsWith('.js');

/** Node's arguments that run `file` (an absolute path to a `.ts` entry), before the entry's own arguments. */
export function entryArgs(file: string): string[] {
  return COMPILED ? [file.replace(/\.ts$/, '.js')] : ['--import', 'tsx', file];
}

/** `execArgv` for `fork` of a module of this tree (its own `__filename` is already the right file). */
export function forkExecArgv(): string[] {
  return COMPILED ? [] : ['--import', 'tsx'];
}
