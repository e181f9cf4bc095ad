/**
 * The code the documentation shows compiles against the code it documents.
 *
 * Every ```ts (or ```typescript) block in README.md and docs/*.md with a `<!-- snippet: name -->` line just above
 * it is type-checked with the TypeScript compiler API, under the project's own compiler options, as a module of
 * its own at the repository root. `from 'dmtp'` resolves to the package's main entry (index.ts) and
 * `from 'dmtp/<path>'` to a file of the repository (e.g. `dmtp/examples/gen/shop/v1/shop` for the example
 * services' generated code). A snippet may `declare` what it assumes (`declare const pool: Pool;`); unused
 * locals are allowed, a type error is not. Unmarked blocks (shell sessions, fragments) are not checked.
 */
import { strict as assert } from 'node:assert';
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import ts from 'typescript';

const ROOT = path.resolve(__dirname, '../../..');

export interface Snippet {
  name: string;
  /** The markdown file, relative to the root. */
  file: string;
  /** 1-based line of the first code line in the markdown file. */
  line: number;
  code: string;
}

const MARKER = /^<!--\s*snippet:\s*([A-Za-z0-9._-]+)\s*-->\s*$/;
const FENCE_OPEN = /^```(ts|typescript)\s*$/;

/** The marked snippets of one markdown text; a marker not followed by a ts block is an error. */
export function extractSnippets(file: string, text: string): Snippet[] {
  const lines = text.split(/\r?\n/);
  const out: Snippet[] = [];
  for (let i = 0; i < lines.length; i++) {
    const m = MARKER.exec(lines[i].trim());
    if (!m) continue;
    let j = i + 1;
    while (j < lines.length && lines[j].trim() === '') j++;
    if (!FENCE_OPEN.test((lines[j] ?? '').trim())) {
      throw new Error(`${file}:${i + 1}: snippet '${m[1]}' is not followed by a \`\`\`ts block`);
    }
    const start = j + 1;
    let end = start;
    while (end < lines.length && lines[end].trim() !== '```') end++;
    if (end === lines.length) throw new Error(`${file}:${j + 1}: snippet '${m[1]}' has no closing fence`);
    out.push({ name: m[1], file, line: start + 1, code: lines.slice(start, end).join('\n') });
    i = end;
  }
  return out;
}

function documents(): string[] {
  const docs = readdirSync(path.join(ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`);
  return ['README.md', ...docs];
}

function compilerOptions(): ts.CompilerOptions {
  const configPath = path.join(ROOT, 'tsconfig.json');
  const { config, error } = ts.readConfigFile(configPath, ts.sys.readFile);
  if (error) throw new Error(ts.flattenDiagnosticMessageText(error.messageText, '\n'));
  const parsed = ts.parseJsonConfigFileContent(config, ts.sys, ROOT);
  return {
    ...parsed.options,
    noEmit: true,
    declaration: false,
    sourceMap: false,
    noUnusedLocals: false,
    noUnusedParameters: false,
    // Snippets are written as an application would write them: ES modules with top-level await.
    module: ts.ModuleKind.ES2022,
    moduleResolution: ts.ModuleResolutionKind.Node10,
    baseUrl: ROOT,
    paths: { dmtp: ['index.ts'], 'dmtp/*': ['*'] },
  };
}

/** Type-checks the snippets in one program; returns the errors as `file:line: snippet 'name': message`. */
export function checkSnippets(snippets: Snippet[]): string[] {
  const options = compilerOptions();
  const virtual = new Map<string, Snippet>();
  for (const s of snippets) {
    // A module of its own (even without imports), so snippets never see each other's names.
    virtual.set(path.join(ROOT, `__snippet_${s.name}.ts`), s);
  }
  const host = ts.createCompilerHost(options, true);
  const { getSourceFile, fileExists, readFile } = host;
  host.fileExists = (f) => virtual.has(path.resolve(f)) || fileExists.call(host, f);
  host.readFile = (f) => {
    const s = virtual.get(path.resolve(f));
    return s ? `${s.code}\nexport {};\n` : readFile.call(host, f);
  };
  host.getSourceFile = (f, lang, onError, create) => {
    const s = virtual.get(path.resolve(f));
    if (s) return ts.createSourceFile(f, `${s.code}\nexport {};\n`, lang, true);
    return getSourceFile.call(host, f, lang, onError, create);
  };
  const program = ts.createProgram([...virtual.keys()], options, host);
  const errors: string[] = [];
  for (const [file, s] of virtual) {
    const sf = program.getSourceFile(file);
    if (!sf) {
      errors.push(`${s.file}: snippet '${s.name}' was not compiled`);
      continue;
    }
    for (const d of ts.getPreEmitDiagnostics(program, sf)) {
      if (d.category !== ts.DiagnosticCategory.Error) continue;
      const text = ts.flattenDiagnosticMessageText(d.messageText, '\n');
      const where =
        d.file && d.start !== undefined && path.resolve(d.file.fileName) === file
          ? `${s.file}:${s.line + d.file.getLineAndCharacterOfPosition(d.start).line}`
          : `${s.file} (snippet '${s.name}', in ${d.file?.fileName ?? 'the program'})`;
      errors.push(`${where}: snippet '${s.name}': ${text}`);
    }
  }
  return errors;
}

describe('documentation snippets', function () {
  this.timeout(120_000);

  const all = documents().flatMap((f) => extractSnippets(f, readFileSync(path.join(ROOT, f), 'utf8')));

  it('finds the marked snippets of README.md and docs/*.md, each name once', () => {
    assert.ok(all.length > 0, 'no <!-- snippet: name --> block in README.md or docs/*.md');
    const names = all.map((s) => s.name);
    assert.deepEqual(
      names.filter((n, i) => names.indexOf(n) !== i),
      [],
      'duplicate snippet names',
    );
  });

  it('type-checks every marked snippet against the project (imports from dmtp → index.ts)', () => {
    assert.deepEqual(checkSnippets(all), []);
  });

  it('would catch a snippet that does not compile, and a marker without a block', () => {
    const bad = extractSnippets(
      'bad.md',
      [
        '<!-- snippet: broken -->',
        '```ts',
        "import { createDmtp } from 'dmtp';",
        'createDmtp(42);',
        '```',
      ].join('\n'),
    );
    const errors = checkSnippets(bad);
    assert.equal(errors.length, 1, errors.join('\n'));
    assert.match(errors[0], /^bad\.md:4: snippet 'broken': .*DmtpOptions/);
    assert.throws(() => extractSnippets('x.md', '<!-- snippet: lonely -->\n\nsome text\n'), /not followed/);
  });
});
