// The import graph of src/ and the two rules docs/architecture.md states for it: no import
// loops, and no import from a lower layer to a higher one. test/import_graph.test.ts runs this
// on the real tree and on small planted graphs (to show that each rule can fail).
//
// An edge is any module path written as a literal in: `import … from '…'`, `import type … from`,
// `import '…'`, `export … from '…'`, and `import('…')` (dynamic, or a type's `typeof import('…')`).
// Type-only imports count. Paths are resolved relative to the importing file (`./x.js` → `./x.ts`);
// package names (no leading '.') are not part of the graph.
import fs from 'node:fs';
import path from 'node:path';

type Token =
  | { kind: 'word'; text: string }
  | { kind: 'punct'; text: string }
  | { kind: 'string'; value: string }
  /** A template literal; value is its text when it has no ${…} substitution, else null. */
  | { kind: 'template'; value: string | null };

// After these words a '/' starts a regular expression rather than a division.
const REGEX_AFTER_WORDS = new Set(['return', 'typeof', 'case', 'do', 'else', 'in', 'of', 'new', 'delete', 'void', 'throw', 'instanceof', 'yield', 'await']);

/** TypeScript source → tokens, without comments. Enough of the grammar to find module paths. */
export function tokenize(source: string): Token[] {
  const tokens: Token[] = [];
  // One entry per open '{': true where it opened a template's ${ … } substitution.
  const braces: boolean[] = [];
  let i = 0;
  const n = source.length;

  const readQuoted = (quote: string): string => {
    let value = '';
    i++;
    while (i < n && source[i] !== quote) {
      if (source[i] === '\\') { value += source[i + 1] ?? ''; i += 2; continue; }
      value += source[i];
      i++;
    }
    i++;
    return value;
  };
  // Reads template text from i up to the closing backtick or the next '${'; true if it closed.
  const readTemplatePart = (): { text: string; closed: boolean } => {
    let text = '';
    while (i < n) {
      const c = source[i]!;
      if (c === '\\') { text += source.slice(i, i + 2); i += 2; continue; }
      if (c === '`') { i++; return { text, closed: true }; }
      if (c === '$' && source[i + 1] === '{') { i += 2; return { text, closed: false }; }
      text += c;
      i++;
    }
    return { text, closed: true };
  };
  const regexAllowed = (): boolean => {
    const prev = tokens[tokens.length - 1];
    if (!prev) return true;
    if (prev.kind === 'word') return REGEX_AFTER_WORDS.has(prev.text);
    if (prev.kind === 'punct') return !(prev.text === ')' || prev.text === ']' || prev.text === '}');
    return false;
  };

  while (i < n) {
    const c = source[i]!;
    if (c === '/' && source[i + 1] === '/') { while (i < n && source[i] !== '\n') i++; continue; }
    if (c === '/' && source[i + 1] === '*') { const end = source.indexOf('*/', i + 2); i = end < 0 ? n : end + 2; continue; }
    if (/\s/.test(c)) { i++; continue; }
    if (c === '\'' || c === '"') { tokens.push({ kind: 'string', value: readQuoted(c) }); continue; }
    if (c === '`') {
      i++;
      const part = readTemplatePart();
      if (part.closed) tokens.push({ kind: 'template', value: part.text });
      else { tokens.push({ kind: 'template', value: null }); braces.push(true); }
      continue;
    }
    if (/[A-Za-z_$0-9]/.test(c)) {
      let j = i;
      while (j < n && /[A-Za-z_$0-9]/.test(source[j]!)) j++;
      tokens.push({ kind: 'word', text: source.slice(i, j) });
      i = j;
      continue;
    }
    if (c === '{') { braces.push(false); tokens.push({ kind: 'punct', text: c }); i++; continue; }
    if (c === '}') {
      if (braces.pop() === true) {
        // The end of a ${ … } substitution: the template goes on.
        i++;
        if (!readTemplatePart().closed) braces.push(true);
        continue;
      }
      tokens.push({ kind: 'punct', text: c });
      i++;
      continue;
    }
    if (c === '/' && regexAllowed()) {
      i++;
      let inClass = false;
      while (i < n && source[i] !== '\n') {
        const r = source[i]!;
        if (r === '\\') { i += 2; continue; }
        if (r === '[') inClass = true;
        else if (r === ']') inClass = false;
        else if (r === '/' && !inClass) { i++; break; }
        i++;
      }
      while (i < n && /[a-z]/.test(source[i]!)) i++;
      tokens.push({ kind: 'punct', text: '/regex/' });
      continue;
    }
    tokens.push({ kind: 'punct', text: c });
    i++;
  }
  return tokens;
}

// Words that may stand between `import`/`export` and `from` (besides names and punctuation).
const CLAUSE_PUNCT = new Set(['{', '}', ',', '*']);

/** The module paths a TypeScript file imports or re-exports, written as literals, in order. */
export function importSpecifiers(source: string): string[] {
  const tokens = tokenize(source);
  const specs: string[] = [];
  const literal = (t: Token | undefined): string | null => {
    if (!t) return null;
    if (t.kind === 'string') return t.value;
    if (t.kind === 'template') return t.value;
    return null;
  };
  for (let k = 0; k < tokens.length; k++) {
    const t = tokens[k]!;
    if (t.kind !== 'word') continue;
    const prev = tokens[k - 1];
    const isMember = prev?.kind === 'punct' && prev.text === '.';
    if (t.text === 'import' && !isMember) {
      const next = tokens[k + 1];
      // import('…') and typeof import('…')
      if (next?.kind === 'punct' && next.text === '(') {
        const spec = literal(tokens[k + 2]);
        const close = tokens[k + 3];
        if (spec !== null && close?.kind === 'punct' && close.text === ')') specs.push(spec);
        continue;
      }
      // import '…'
      const bare = next?.kind === 'string' ? next.value : null;
      if (bare !== null) { specs.push(bare); continue; }
    }
    if (t.text === 'from' && !isMember) {
      const spec = tokens[k + 1]?.kind === 'string' ? literal(tokens[k + 1]) : null;
      if (spec === null) continue;
      // Walk back over the import/export clause to its keyword.
      let j = k - 1;
      while (j >= 0) {
        const c = tokens[j]!;
        if (c.kind === 'word' && (c.text === 'import' || c.text === 'export')) break;
        if (c.kind === 'word' || (c.kind === 'punct' && CLAUSE_PUNCT.has(c.text))) { j--; continue; }
        j = -1;
      }
      if (j >= 0) specs.push(spec);
    }
  }
  return specs;
}

export interface Edge { readonly from: string; readonly to: string }

export interface GraphReport {
  /** Every edge between files of the tree, in file order. */
  edges: Edge[];
  /** One loop per strongly connected group of files: a → b → … → a. */
  cycles: string[][];
  /** Imports from a file in a lower layer into a file in a higher one. */
  upward: Edge[];
  /** Imports that leave the tree (src/ importing bench/ or test/). */
  outside: Edge[];
  /** Relative imports whose target file is not in the tree. */
  unresolved: Edge[];
  /** Files under no listed layer. */
  unlayered: string[];
}

/** The layer entry a file falls under: 'src/backend/cuda/x.ts' → 'backend'; 'src/x.ts' → 'x.ts'. */
function entryOf(root: string, file: string): string {
  return file.slice(root.length + 1).split('/')[0]!;
}

/**
 * Checks the graph of `files` (path → source; paths relative to the package, '/'-separated,
 * all under root) against `layers`, listed top first; a layer is one or more folders of root
 * (or files directly in root, as 'name.ts'), which may import each other (loops aside).
 */
export function checkImportGraph(files: ReadonlyMap<string, string>, root: string, layers: readonly (readonly string[])[]): GraphReport {
  const layerOf = new Map<string, number>();
  layers.forEach((folders, index) => { for (const f of folders) layerOf.set(f, index); });
  const report: GraphReport = { edges: [], cycles: [], upward: [], outside: [], unresolved: [], unlayered: [] };
  const next = new Map<string, string[]>();
  const names = [...files.keys()].sort();
  for (const from of names) {
    const targets: string[] = [];
    next.set(from, targets);
    if (!layerOf.has(entryOf(root, from))) report.unlayered.push(from);
    for (const spec of importSpecifiers(files.get(from)!)) {
      if (!spec.startsWith('.')) continue;
      const to = path.posix.normalize(path.posix.join(path.posix.dirname(from), spec)).replace(/\.js$/, '.ts');
      const edge = { from, to };
      if (!to.startsWith(`${root}/`)) { report.outside.push(edge); continue; }
      if (!files.has(to)) { report.unresolved.push(edge); continue; }
      if (!targets.includes(to)) targets.push(to);
      report.edges.push(edge);
      const a = layerOf.get(entryOf(root, from)), b = layerOf.get(entryOf(root, to));
      if (a !== undefined && b !== undefined && b < a) report.upward.push(edge);
    }
  }
  report.cycles = cyclesOf(names, next);
  return report;
}

/** One loop through each strongly connected group of two or more files (or a file importing itself). */
function cyclesOf(nodes: readonly string[], next: ReadonlyMap<string, readonly string[]>): string[][] {
  // Tarjan's algorithm, iterative.
  const index = new Map<string, number>(), low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const groups: string[][] = [];
  let counter = 0;
  for (const start of nodes) {
    if (index.has(start)) continue;
    const work: { node: string; child: number }[] = [{ node: start, child: 0 }];
    index.set(start, counter); low.set(start, counter); counter++;
    stack.push(start); onStack.add(start);
    while (work.length) {
      const top = work[work.length - 1]!;
      const succ = next.get(top.node) ?? [];
      if (top.child < succ.length) {
        const w = succ[top.child++]!;
        if (!index.has(w)) {
          index.set(w, counter); low.set(w, counter); counter++;
          stack.push(w); onStack.add(w);
          work.push({ node: w, child: 0 });
        } else if (onStack.has(w)) {
          low.set(top.node, Math.min(low.get(top.node)!, index.get(w)!));
        }
        continue;
      }
      work.pop();
      const parent = work[work.length - 1];
      if (parent) low.set(parent.node, Math.min(low.get(parent.node)!, low.get(top.node)!));
      if (low.get(top.node) === index.get(top.node)) {
        const group: string[] = [];
        for (;;) {
          const w = stack.pop()!;
          onStack.delete(w);
          group.push(w);
          if (w === top.node) break;
        }
        const selfLoop = group.length === 1 && (next.get(group[0]!) ?? []).includes(group[0]!);
        if (group.length > 1 || selfLoop) groups.push(group.sort());
      }
    }
  }
  return groups.map((g) => shortestLoop(g[0]!, new Set(g), next));
}

/** The shortest loop from start back to start inside group (breadth-first). */
function shortestLoop(start: string, group: ReadonlySet<string>, next: ReadonlyMap<string, readonly string[]>): string[] {
  const cameFrom = new Map<string, string>();
  const queue = [start];
  for (let q = 0; q < queue.length; q++) {
    const node = queue[q]!;
    for (const w of next.get(node) ?? []) {
      if (!group.has(w)) continue;
      if (w === start) {
        const loop = [start];
        for (let at = node; at !== start; at = cameFrom.get(at)!) loop.splice(1, 0, at);
        loop.push(start);
        return loop;
      }
      if (!cameFrom.has(w)) { cameFrom.set(w, node); queue.push(w); }
    }
  }
  throw new Error(`internal: ${start} is in a loop group but no loop was found`);
}

/**
 * The layer list of docs/architecture.md: the first fenced block after the heading "## Layers",
 * one layer a line, top first, folders written as `name/` (a file directly in src/ as
 * `name.ts`) and separated by spaces.
 */
export function parseLayers(markdown: string): string[][] {
  const heading = markdown.search(/^## Layers\b/m);
  if (heading < 0) throw new Error('docs/architecture.md has no "## Layers" heading');
  const block = /```[^\n]*\n([\s\S]*?)```/.exec(markdown.slice(heading));
  if (!block) throw new Error('docs/architecture.md has no fenced block under "## Layers"');
  const layers: string[][] = [];
  for (const line of block[1]!.split('\n')) {
    const folders = line.trim().split(/\s+/).filter((w) => w.length > 0);
    if (folders.length === 0) continue;
    for (const f of folders) if (!/^[a-z_]+(\/|\.ts)$/.test(f)) throw new Error(`docs/architecture.md layer line "${line.trim()}": "${f}" is not a folder name ending in / (nor a file name ending in .ts)`);
    layers.push(folders.map((f) => f.replace(/\/$/, '')));
  }
  return layers;
}

/** Every .ts file under root (a folder of packageDir), as '/'-separated paths relative to packageDir. */
export function readTree(packageDir: string, root: string): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (rel: string): void => {
    for (const entry of fs.readdirSync(path.join(packageDir, rel), { withFileTypes: true })) {
      const child = `${rel}/${entry.name}`;
      if (entry.isDirectory()) walk(child);
      else if (entry.isFile() && entry.name.endsWith('.ts')) files.set(child, fs.readFileSync(path.join(packageDir, child), 'utf8'));
    }
  };
  walk(root);
  return files;
}

export function formatEdge(e: Edge): string { return `${e.from} → ${e.to}`; }
