// Arrows point down only: the import graph of src/ has no loops and no import from a lower
// layer into a higher one, per the layer list of docs/architecture.md ("## Layers"), and src/
// never imports bench/ or test/. The checker (helpers/import_graph.ts) is also run on small
// planted graphs, so a loop, an upward import and an import out of src/ are shown to fail.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkImportGraph, formatEdge, importSpecifiers, parseLayers, readTree } from './helpers/import_graph.js';

// dist/test/import_graph.test.js → the package folder.
const PACKAGE = fileURLToPath(new URL('../../', import.meta.url));

// Breaks of the rules in the tree today, written as the checker prints them. The test fails
// when one of them is gone too, so that this list stays exact.
const KNOWN_UPWARD: readonly string[] = [];
const KNOWN_LOOPS: readonly string[] = [];

describe('the import graph of src/', () => {
  const layers = parseLayers(fs.readFileSync(path.join(PACKAGE, 'docs', 'architecture.md'), 'utf8'));
  const report = checkImportGraph(readTree(PACKAGE, 'src'), 'src', layers);

  test('the layer list of docs/architecture.md is read', () => {
    assert.deepEqual(layers[0], ['cli'], 'top layer');
    assert.deepEqual(layers[layers.length - 1], ['tensor', 'package_root.ts'], 'bottom layer');
    assert.ok(report.edges.length > 100, `only ${report.edges.length} import edges found in src/`);
  });

  test('every file of src/ is in a listed layer', () => {
    assert.deepEqual(report.unlayered, [], 'files in a folder that no line of "## Layers" in docs/architecture.md lists: add the folder to the layer it belongs to');
  });

  test('src/ imports nothing outside src/ (bench/ and test/ import src/, never the reverse)', () => {
    assert.deepEqual(report.outside.map(formatEdge), []);
    assert.deepEqual(report.unresolved.map(formatEdge), [], 'relative imports of files that do not exist');
  });

  test('no import loops', () => {
    const loops = report.cycles.map((c) => c.join(' → '));
    assert.deepEqual(loops.filter((l) => !KNOWN_LOOPS.includes(l)), [], 'import loops (break each one by moving the shared piece down)');
    assert.deepEqual(KNOWN_LOOPS.filter((l) => !loops.includes(l)), [], 'listed in KNOWN_LOOPS but gone: remove it from the list');
  });

  test('no import from a lower layer into a higher one', () => {
    const upward = report.upward.map(formatEdge);
    assert.deepEqual(upward.filter((e) => !KNOWN_UPWARD.includes(e)), [], 'upward imports (file → file) against the layer list of docs/architecture.md');
    assert.deepEqual(KNOWN_UPWARD.filter((e) => !upward.includes(e)), [], 'listed in KNOWN_UPWARD but gone: remove it from the list');
  });
});

describe('the checker on planted graphs', () => {
  const layers = [['high'], ['mid', 'side'], ['low', 'listed.ts']];

  test('a loop, an upward import, an import out of the tree and an unlisted folder are all reported', () => {
    const files = new Map<string, string>([
      // A three-file loop through a type-only import and a re-export.
      ['src/mid/a.ts', `import { b } from './b.js';\nexport const a = b + 1;`],
      ['src/mid/b.ts', `export { c as b } from '../side/c.js';`],
      ['src/side/c.ts', `import type { A } from '../mid/a.js';\nexport const c = 1;`],
      // An upward import, written as a dynamic import with a literal path.
      ['src/low/d.ts', `export async function d() { return (await import('../high/e.js')).e; }`],
      // An import of bench/, and a downward import (allowed).
      ['src/high/e.ts', `import { run } from '../../bench/f.js';\nimport { h } from '../low/h.js';\nexport const e = [run, h];`],
      ['src/low/h.ts', `export const h = 2;`],
      ['src/stray/g.ts', `export const g = 0;`],
      ['src/stray_file.ts', `export const s = 0;`],
      ['src/listed.ts', `export const l = 0;`],
    ]);
    const report = checkImportGraph(files, 'src', layers);
    assert.deepEqual(report.cycles, [['src/mid/a.ts', 'src/mid/b.ts', 'src/side/c.ts', 'src/mid/a.ts']]);
    assert.deepEqual(report.upward.map(formatEdge), ['src/low/d.ts → src/high/e.ts']);
    assert.deepEqual(report.outside.map(formatEdge), ['src/high/e.ts → bench/f.ts']);
    assert.deepEqual(report.unlayered, ['src/stray/g.ts', 'src/stray_file.ts']);
    assert.deepEqual(report.unresolved, []);
  });

  test('a file importing itself is a loop; a clean graph reports nothing', () => {
    const self = checkImportGraph(new Map([['src/low/a.ts', `import './a.js';`]]), 'src', layers);
    assert.deepEqual(self.cycles, [['src/low/a.ts', 'src/low/a.ts']]);
    const clean = checkImportGraph(new Map([
      ['src/high/a.ts', `import { b } from '../mid/b.js';\nimport { c } from '../side/c.js';`],
      ['src/mid/b.ts', `import { c } from '../side/c.js';\nexport const b = c;`],
      ['src/side/c.ts', `import { d } from '../low/d.js';\nexport const c = d;`],
      ['src/low/d.ts', `import fs from 'node:fs';\nexport const d = fs;`],
    ]), 'src', layers);
    assert.deepEqual({ ...clean, edges: [] }, { edges: [], cycles: [], upward: [], outside: [], unresolved: [], unlayered: [] });
    assert.equal(clean.edges.length, 4);
  });
});

describe('importSpecifiers', () => {
  test('finds every literal import form and nothing in comments, strings or regular expressions', () => {
    const source = [
      `// import { x } from './in_line_comment.js';`,
      `/* import './in_block_comment.js'; export * from './also.js' */`,
      `import {`,
      `  a,`,
      `  type B, // a comment inside the clause`,
      `} from './multi_line.js';`,
      `import type { C } from "./type_only.js";`,
      `import D, * as E from './default_and_namespace.js';`,
      `import './side_effect.js';`,
      `export * from './star.js';`,
      `export * as F from './star_as.js';`,
      `export type { G } from './type_reexport.js';`,
      `export { h as H } from './reexport.js';`,
      `const lazy = await import('./dynamic.js');`,
      'const tick = await import(`./dynamic_template.js`);',
      `type M = typeof import('some-package');`,
      `const msg = "import { y } from './in_string.js'";`,
      'const tpl = `import z from \'./in_template.js\' ${a} and ${`nested ${a}`} done`;',
      `const re = /from '.\\/in_regex.js'/g;`,
      `const ratio = a / 2 / 3; const from = 'not_an_import.js';`,
      `const computed = await import(\`./\${name}.js\`);`,
      `obj.import('./method_call.js');`,
      `export const meta = import.meta.url;`,
    ].join('\n');
    assert.deepEqual(importSpecifiers(source), [
      './multi_line.js', './type_only.js', './default_and_namespace.js', './side_effect.js', './star.js',
      './star_as.js', './type_reexport.js', './reexport.js', './dynamic.js', './dynamic_template.js', 'some-package',
    ]);
  });
});

describe('parseLayers', () => {
  test('reads one layer a line, top first, from the block under "## Layers"', () => {
    const md = '# t\n\n## Layers\n\n```\ncli/\nnn/ optim/\ntensor/ root_file.ts\n```\n\n```\nnot/ this/\n```\n';
    assert.deepEqual(parseLayers(md), [['cli'], ['nn', 'optim'], ['tensor', 'root_file.ts']]);
  });
  test('a missing heading or a word that is not a folder is an error naming the fix', () => {
    assert.throws(() => parseLayers('# no layers here'), /no "## Layers" heading/);
    assert.throws(() => parseLayers('## Layers\n```\ncli/ the command line\n```\n'), /"the" is not a folder name/);
  });
});
