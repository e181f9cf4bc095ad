/**
 * Writes the API reference, docs/api/*.md, from the TypeScript sources: for each public module (its index.ts),
 * every exported symbol with its JSDoc, its declaration (signatures of functions and of the public members of
 * classes; interfaces, types, enums and option/DEFAULTS objects as written) and where it is defined.
 *
 *   scripts/gen-api-docs.sh            # regenerate docs/api/
 *   scripts/gen-api-docs.sh --check    # exit 1 if docs/api/ is not what the sources generate (CI)
 *
 * Uses the TypeScript compiler API (typescript is already a devDependency) rather than typedoc: the output is
 * plain markdown, checked in, stable (sorted, no dates), and readable on GitHub without a site.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import ts from 'typescript';

const ROOT = path.resolve(__dirname, '..');
const OUT = path.join(ROOT, 'docs', 'api');

/** The public modules, in the order of the module map (docs/architecture.md). */
const MODULES: { name: string; dir: string }[] = [
  { name: 'common', dir: 'common' },
  { name: 'registry', dir: 'registry' },
  { name: 'rpc', dir: 'rpc' },
  { name: 'events', dir: 'events' },
  { name: 'coordinator', dir: 'coordinator' },
  { name: 'txapi', dir: 'txapi' },
];

/** Longest declaration printed as written; longer ones are cut with a pointer to the source. */
const MAX_DECLARATION_LINES = 80;

type Kind = 'class' | 'function' | 'interface' | 'type' | 'enum' | 'constant';
const KIND_ORDER: Kind[] = ['function', 'class', 'interface', 'type', 'enum', 'constant'];
const KIND_TITLE: Record<Kind, string> = {
  function: 'Functions',
  class: 'Classes',
  interface: 'Interfaces',
  type: 'Types',
  enum: 'Enums',
  constant: 'Constants',
};

interface Entry {
  name: string;
  kind: Kind;
  doc: string;
  body: string;
  source: string;
}

function program(): { program: ts.Program; checker: ts.TypeChecker } {
  const { config } = ts.readConfigFile(path.join(ROOT, 'tsconfig.json'), ts.sys.readFile);
  const parsed = ts.parseJsonConfigFileContent(config, ts.sys, ROOT);
  const roots = MODULES.map((m) => path.join(ROOT, m.dir, 'index.ts'));
  const p = ts.createProgram(roots, { ...parsed.options, noEmit: true });
  return { program: p, checker: p.getTypeChecker() };
}

const rel = (file: string) => path.relative(ROOT, file).split(path.sep).join('/');

function sourceLink(decl: ts.Declaration): string {
  const sf = decl.getSourceFile();
  const line = sf.getLineAndCharacterOfPosition(decl.getStart()).line + 1;
  return `[${rel(sf.fileName)}:${line}](../../${rel(sf.fileName)}#L${line})`;
}

function docOf(symbol: ts.Symbol, checker: ts.TypeChecker): string {
  const text = ts.displayPartsToString(symbol.getDocumentationComment(checker)).trim();
  const tags = symbol
    .getJsDocTags(checker)
    .filter((t) => t.name !== 'internal')
    .map((t) => `*@${t.name}* ${ts.displayPartsToString(t.text ?? []).trim()}`.trim());
  return [text, ...tags].filter(Boolean).join('\n\n');
}

/** The declaration's own text (top-level, so not indented), without `export`, cut when very long. */
function declarationText(decl: ts.Node, file: string): string {
  const sf = decl.getSourceFile();
  const text = sf.text.slice(decl.getStart(sf), decl.getEnd()).replace(/^export\s+(declare\s+)?/, '');
  const lines = text.split('\n');
  if (lines.length <= MAX_DECLARATION_LINES) return text;
  return [...lines.slice(0, MAX_DECLARATION_LINES), `// … cut here: see ${file}`].join('\n');
}

/** A doc text as a JSDoc comment: one line, or an opening line, ` * ` lines and a closing one. */
function jsdoc(doc: string, indent: string): string[] {
  const lines = doc.split('\n');
  if (lines.length === 1) return [`${indent}/** ${doc} */`];
  return [`${indent}/**`, ...lines.map((l) => `${indent} *${l ? ` ${l}` : ''}`), `${indent} */`];
}

function isPublicMember(m: ts.ClassElement): boolean {
  const flags = ts.getCombinedModifierFlags(m as unknown as ts.Declaration);
  if (flags & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected)) return false;
  if (m.name && ts.isPrivateIdentifier(m.name)) return false;
  return !!m.name || ts.isConstructorDeclaration(m);
}

function oneLine(s: string): string {
  return s.replace(/\s+/g, ' ').trim();
}

/** A class as its public surface: constructor, properties, accessors and methods, each with its JSDoc summary. */
function classBody(decl: ts.ClassDeclaration, checker: ts.TypeChecker): string {
  const lines: string[] = [];
  const heritage = decl.heritageClauses?.map((h) => h.getText()).join(' ');
  lines.push(
    `class ${decl.name?.text ?? ''}${decl.typeParameters ? `<${decl.typeParameters.map((t) => t.getText()).join(', ')}>` : ''}${heritage ? ` ${heritage}` : ''} {`,
  );
  for (const m of decl.members) {
    if (!isPublicMember(m)) continue;
    const sym = m.name ? checker.getSymbolAtLocation(m.name) : undefined;
    const doc = sym ? ts.displayPartsToString(sym.getDocumentationComment(checker)).trim() : '';
    if (doc) lines.push(...jsdoc(doc, '  '));
    const isStatic =
      ts.getCombinedModifierFlags(m as unknown as ts.Declaration) & ts.ModifierFlags.Static ? 'static ' : '';
    const readonly =
      ts.getCombinedModifierFlags(m as unknown as ts.Declaration) & ts.ModifierFlags.Readonly
        ? 'readonly '
        : '';
    if (ts.isConstructorDeclaration(m)) {
      const sig = checker.getSignatureFromDeclaration(m);
      lines.push(
        `  constructor${sig ? oneLine(checker.signatureToString(sig, undefined, ts.TypeFormatFlags.NoTruncation)).replace(/: [^:]+$/, '') : '()'};`,
      );
    } else if (ts.isMethodDeclaration(m)) {
      const sig = checker.getSignatureFromDeclaration(m);
      lines.push(
        `  ${isStatic}${m.name.getText()}${sig ? oneLine(checker.signatureToString(sig, undefined, ts.TypeFormatFlags.NoTruncation)) : '()'};`,
      );
    } else if (ts.isGetAccessorDeclaration(m)) {
      const type = m.type ? m.type.getText() : checker.typeToString(checker.getTypeAtLocation(m));
      lines.push(`  ${isStatic}get ${m.name.getText()}(): ${oneLine(type)};`);
    } else if (ts.isSetAccessorDeclaration(m)) {
      continue;
    } else if (ts.isPropertyDeclaration(m)) {
      const type = m.type ? m.type.getText() : checker.typeToString(checker.getTypeAtLocation(m));
      lines.push(
        `  ${isStatic}${readonly}${m.name.getText()}${m.questionToken ? '?' : ''}: ${oneLine(type)};`,
      );
    }
  }
  // Parameter properties (`constructor(readonly registry: Registry)`) are public members too.
  const ctor = decl.members.find(ts.isConstructorDeclaration);
  for (const p of ctor?.parameters ?? []) {
    const flags = ts.getCombinedModifierFlags(p);
    if (!(flags & (ts.ModifierFlags.Public | ts.ModifierFlags.Readonly)) || flags & ts.ModifierFlags.Private)
      continue;
    if (flags & ts.ModifierFlags.Protected) continue;
    lines.push(
      `  ${flags & ts.ModifierFlags.Readonly ? 'readonly ' : ''}${p.name.getText()}: ${oneLine(p.type?.getText() ?? 'unknown')};`,
    );
  }
  lines.push('}');
  return lines.join('\n');
}

function entryOf(name: string, symbol: ts.Symbol, checker: ts.TypeChecker): Entry | undefined {
  const target = symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol;
  const decls = target.getDeclarations() ?? [];
  const decl = decls[0];
  if (!decl) return undefined;
  const file = rel(decl.getSourceFile().fileName);
  if (file.startsWith('node_modules/')) return undefined;
  const doc = docOf(target, checker);
  const source = sourceLink(decl);
  if (ts.isFunctionDeclaration(decl)) {
    const sigs = decls
      .filter(ts.isFunctionDeclaration)
      .filter((d, _, all) => all.length === 1 || !d.body) // overloads, not the implementation
      .map((d) => checker.getSignatureFromDeclaration(d))
      .filter((s): s is ts.Signature => !!s)
      .map(
        (s) =>
          `function ${name}${oneLine(checker.signatureToString(s, undefined, ts.TypeFormatFlags.NoTruncation))};`,
      );
    return { name, kind: 'function', doc, body: sigs.join('\n'), source };
  }
  if (ts.isClassDeclaration(decl))
    return { name, kind: 'class', doc, body: classBody(decl, checker), source };
  if (ts.isInterfaceDeclaration(decl)) {
    return {
      name,
      kind: 'interface',
      doc,
      body: decls.map((d) => declarationText(d, file)).join('\n\n'),
      source,
    };
  }
  if (ts.isTypeAliasDeclaration(decl))
    return { name, kind: 'type', doc, body: declarationText(decl, file), source };
  if (ts.isEnumDeclaration(decl))
    return { name, kind: 'enum', doc, body: declarationText(decl, file), source };
  if (ts.isVariableDeclaration(decl)) {
    const init = decl.initializer;
    const literal =
      init &&
      (ts.isObjectLiteralExpression(init) ||
        ts.isArrayLiteralExpression(init) ||
        ts.isLiteralExpression(init) ||
        (ts.isAsExpression(init) && ts.isObjectLiteralExpression(init.expression)) ||
        (ts.isCallExpression(init) && /^Object\.freeze$/.test(init.expression.getText())));
    const body = literal
      ? `const ${declarationText(decl, file)}`
      : `const ${name}: ${oneLine(checker.typeToString(checker.getTypeOfSymbolAtLocation(target, decl), undefined, ts.TypeFormatFlags.NoTruncation))}`;
    return { name, kind: 'constant', doc, body, source };
  }
  return undefined;
}

function moduleDoc(indexFile: ts.SourceFile): string {
  const first = indexFile.statements[0];
  const ranges = first ? (ts.getLeadingCommentRanges(indexFile.text, first.getFullStart()) ?? []) : [];
  const block = ranges.map((r) => indexFile.text.slice(r.pos, r.end)).find((t) => t.startsWith('/**'));
  if (!block) return '';
  return block
    .replace(/^\/\*\*\s?/, '')
    .replace(/\s*\*\/$/, '')
    .split('\n')
    .map((l) => l.replace(/^\s*\* ?/, ''))
    .join('\n')
    .trim();
}

const anchor = (name: string) => name.toLowerCase().replace(/[^a-z0-9_-]/g, '');

function render(mod: { name: string; dir: string }, doc: string, entries: Entry[]): string {
  const out: string[] = [
    `# \`${mod.name}\``,
    '',
    '<!-- Generated by scripts/gen-api-docs.sh from the TypeScript sources; do not edit by hand. -->',
    '',
    doc,
    '',
    `Import: \`import { … } from 'dmtp'\` (see [index](README.md) for which names are flat) or`,
    `\`import { ${mod.name} } from 'dmtp'\` → \`${mod.name}.<name>\`. Source: [\`${mod.dir}/\`](../../${mod.dir}/index.ts).`,
    '',
  ];
  for (const kind of KIND_ORDER) {
    const of = entries.filter((e) => e.kind === kind);
    if (of.length === 0) continue;
    out.push(`**${KIND_TITLE[kind]}:** ${of.map((e) => `[${e.name}](#${anchor(e.name)})`).join(', ')}`, '');
  }
  for (const kind of KIND_ORDER) {
    const of = entries.filter((e) => e.kind === kind);
    if (of.length === 0) continue;
    out.push(`## ${KIND_TITLE[kind]}`, '');
    for (const e of of) {
      out.push(`### ${e.name}`, '');
      if (e.doc) out.push(e.doc, '');
      out.push('```ts', e.body, '```', '', `Defined in ${e.source}.`, '');
    }
  }
  return (
    out
      .join('\n')
      .replace(/\n{3,}/g, '\n\n')
      .trimEnd() + '\n'
  );
}

/** The first sentence of a module's doc, for the index table. */
function summary(doc: string): string {
  const para = oneLine(doc.split(/\n\n|\n- /)[0]);
  const m = /^(.*?\.)(\s|$)/.exec(para);
  return (m ? m[1] : para).replace(/:$/, '.').replace(/\|/g, '\\|');
}

function renderIndex(counts: { name: string; doc: string; n: number }[], flat: string[]): string {
  return [
    '# API reference',
    '',
    '<!-- Generated by scripts/gen-api-docs.sh from the TypeScript sources; do not edit by hand. -->',
    '',
    "Every exported symbol of DMTP's modules, with its JSDoc and declaration, generated from the sources",
    '(`scripts/gen-api-docs.sh`). The package entry, [`index.ts`](../../index.ts), exports the transaction API',
    '(txapi), the RPC helpers (rpc), the typed errors and the main classes flat, and every module as a namespace:',
    '',
    '```ts',
    "import { createDmtp, Participant, client, startServer, EtcdRegistry, Coordinator } from 'dmtp';",
    "import { coordinator, events, registry } from 'dmtp'; // coordinator.DEFAULTS, events.subscribe, …",
    '```',
    '',
    '| module | exports | what it is |',
    '|---|---|---|',
    ...counts.map((c) => `| [\`${c.name}\`](${c.name}.md) | ${c.n} | ${summary(c.doc)} |`),
    '',
    `Flat names of \`dmtp\`: ${flat.map((n) => `\`${n}\``).join(', ')}.`,
    '',
  ].join('\n');
}

function generate(): Map<string, string> {
  const { program: p, checker } = program();
  const files = new Map<string, string>();
  const counts: { name: string; doc: string; n: number }[] = [];
  for (const mod of MODULES) {
    const sf = p.getSourceFile(path.join(ROOT, mod.dir, 'index.ts'));
    if (!sf) throw new Error(`${mod.dir}/index.ts is not in the program`);
    const sym = checker.getSymbolAtLocation(sf);
    if (!sym) throw new Error(`${mod.dir}/index.ts is not a module`);
    const entries = checker
      .getExportsOfModule(sym)
      .map((s) => entryOf(s.getName(), s, checker))
      .filter((e): e is Entry => !!e)
      .sort((a, b) => a.name.localeCompare(b.name, 'en'));
    const doc = moduleDoc(sf);
    files.set(`${mod.name}.md`, render(mod, doc, entries));
    counts.push({ name: mod.name, doc, n: entries.length });
  }
  const root = ts.createProgram([path.join(ROOT, 'index.ts')], p.getCompilerOptions());
  const rootChecker = root.getTypeChecker();
  const rootSym = rootChecker.getSymbolAtLocation(root.getSourceFile(path.join(ROOT, 'index.ts'))!);
  const flat = rootSym
    ? rootChecker
        .getExportsOfModule(rootSym)
        .map((s) => s.getName())
        .filter((n) => !MODULES.some((m) => m.name === n) && n !== 'proto')
        .sort((a, b) => a.localeCompare(b, 'en'))
    : [];
  files.set('README.md', renderIndex(counts, flat));
  return files;
}

function main(): void {
  const check = process.argv.includes('--check');
  const files = generate();
  if (check) {
    const existing = existsSync(OUT) ? readdirSync(OUT).filter((f) => f.endsWith('.md')) : [];
    const stale = [
      ...[...files]
        .filter(
          ([f, text]) => !existsSync(path.join(OUT, f)) || readFileSync(path.join(OUT, f), 'utf8') !== text,
        )
        .map(([f]) => f),
      ...existing.filter((f) => !files.has(f)),
    ];
    if (stale.length) {
      process.stderr.write(`docs/api is stale (${stale.join(', ')}): run scripts/gen-api-docs.sh\n`);
      process.exit(1);
    }
    process.stdout.write(`docs/api is up to date (${files.size} files)\n`);
    return;
  }
  if (existsSync(OUT)) for (const f of readdirSync(OUT)) if (f.endsWith('.md')) rmSync(path.join(OUT, f));
  mkdirSync(OUT, { recursive: true });
  for (const [f, text] of files) writeFileSync(path.join(OUT, f), text);
  process.stdout.write(`wrote ${files.size} files to docs/api/\n`);
}

main();
