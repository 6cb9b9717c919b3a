// tokenizeCorpus: .txt / .jsonl / .jsonl.zst (stored-block frames made here, and a frame made
// by the reference zstd compressor) from folders and files, on worker threads and in-process;
// the tokens in the shards equal each document's bytes + EOS; shards split at shardTokens;
// resume after an interruption (a leftover .partial, a file missing from the manifest) redoes
// only what is unfinished; bad JSONL lines (file:line Error, or skipped, counted and named);
// files of other types in input folders named as ignored; uint16 shards with content hashes;
// progress and summary lines; missing and unsupported inputs; a different tokenizer on resume;
// an HF tokenizer in the workers.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { tokenizeCorpus, listInputs } from '../src/data/tokenize.js';
import { readManifest } from '../src/data/manifest.js';
import { openShard } from '../src/data/shards.js';
import { encodeBytes, BYTE_EOS_ID } from '../src/data/byte_tokenizer.js';
import { loadHfTokenizer } from '../src/data/hf_tokenizer.js';
import { zstdStoredFrames, smallJsonlText, SMALL_JSONL_ZST_BASE64 } from './fixtures/data/zstd_frames.js';
import { byteLevelBpeFromMerges } from './fixtures/data/bpe_tokenizer_json.js';

const made: string[] = [];
after(() => { for (const d of made) fs.rmSync(d, { recursive: true, force: true }); });
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-tok-'));
  made.push(d);
  return d;
}

/** All tokens of a data folder, in manifest order. */
function readAll(dir: string): number[] {
  return Array.from(readAllTyped(dir));
}

function readAllTyped(dir: string): Uint32Array {
  const m = readManifest(dir)!;
  const parts: Uint32Array[] = [];
  for (const s of m.sources) {
    for (const sh of s.shards) {
      const r = openShard(path.join(dir, sh.file));
      parts.push(r.read(0, r.tokenCount));
      r.close();
    }
  }
  const out = new Uint32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function docsTokens(docs: string[]): number[] {
  const out: number[] = [];
  for (const d of docs) out.push(...encodeBytes(d), BYTE_EOS_ID);
  return out;
}

function jsonl(texts: string[]): string {
  return texts.map((text, i) => JSON.stringify({ id: i, text })).join('\n') + '\n';
}

interface Corpus { inputs: string[]; expected: number[]; files: number }

/** Writes one input of each kind; expected = tokens in sorted-path order. */
function makeCorpus(root: string): Corpus {
  const sub = path.join(root, 'in', 'sub');
  fs.mkdirSync(sub, { recursive: true });
  const txt = 'A plain text file.\nIt is one document, ünïcödé included.\n\nEnd.';
  const docsA = ['first doc', 'second doc with "quotes" and \\ backslash', '', 'line\nbreak inside'];
  const docsZ = Array.from({ length: 300 }, (_, i) => `zstd document ${i} ${'x'.repeat(i % 50)}`);
  const files: [string, string | Uint8Array, number[]][] = [
    [path.join(root, 'in', 'a.jsonl'), jsonl(docsA) + '\n\n', docsTokens(docsA)], // trailing blank lines are ignored
    [path.join(root, 'in', 'b.txt'), txt, docsTokens([txt])],
    // Several frames, blocks of 1000 bytes, RLE blocks inside.
    [path.join(sub, 'c.jsonl.zst'), zstdStoredFrames(Buffer.from(jsonl(docsZ) + jsonl(['z'.repeat(3000)])), { blockBytes: 1000, frameBytes: 7000 }), docsTokens([...docsZ, 'z'.repeat(3000)])],
    [path.join(sub, 'd.jsonl.zst'), Buffer.from(SMALL_JSONL_ZST_BASE64, 'base64'), docsTokens(smallJsonlText().trim().split('\n').map((l) => (JSON.parse(l) as { text: string }).text))],
    [path.join(root, 'in', 'ignored.md'), 'not an input', []],
  ];
  for (const [file, content] of files) fs.writeFileSync(file, content);
  const extra = path.join(root, 'e.txt');
  fs.writeFileSync(extra, 'extra');
  const all: [string, number[]][] = files.filter(([f]) => !f.endsWith('.md')).map(([f, , t]) => [f, t]);
  all.push([extra, docsTokens(['extra'])]);
  all.sort((x, y) => (x[0] < y[0] ? -1 : 1));
  return { inputs: [path.join(root, 'in'), extra], expected: all.flatMap(([, t]) => t), files: all.length };
}

test('tokenize: every format, on workers and in-process, gives document bytes + EOS', async () => {
  for (const workers of [2, 0]) {
    const root = tempDir();
    const corpus = makeCorpus(root);
    const out = path.join(root, 'out');
    const summary = await tokenizeCorpus({ inputs: corpus.inputs, output: out, tokenizer: { kind: 'bytes' }, workers, progress: false });
    assert.equal(summary.files, corpus.files);
    assert.equal(summary.filesAlreadyDone, 0);
    assert.equal(summary.tokens, corpus.expected.length);
    assert.equal(summary.totalTokens, corpus.expected.length);
    assert.equal(summary.documents, 4 + 1 + 301 + 40 + 1);
    assert.deepEqual(summary.ignoredFiles, [path.join(root, 'in', 'ignored.md')]);
    assert.deepEqual(summary.skippedExamples, []);
    assert.deepEqual(readAll(out), corpus.expected, `workers=${workers}`);
    const m = readManifest(out)!;
    assert.equal(m.tokenizer.vocabSize, 257);
    for (const s of m.sources) {
      for (const sh of s.shards) {
        const r = openShard(path.join(out, sh.file));
        assert.equal(r.dtype, 'uint16', 'byte tokens take 2 bytes each');
        const hash = createHash('sha256').update(new Uint8Array(r.read(0, r.tokenCount).buffer)).digest('hex');
        r.close();
        assert.equal(sh.sha256, hash, `${sh.file}: the manifest holds the content hash`);
      }
    }
    assert.equal(m.tokenizer.eosId, 256);
    assert.deepEqual(m.sources.map((s) => s.source), [...m.sources.map((s) => s.source)].sort());
  }
});

test('tokenize: shardTokens splits a file into several shards, the stream is unchanged', async () => {
  const root = tempDir();
  const corpus = makeCorpus(root);
  const out = path.join(root, 'out');
  await tokenizeCorpus({ inputs: corpus.inputs, output: out, tokenizer: { kind: 'bytes' }, workers: 2, shardTokens: 1000, progress: false });
  const m = readManifest(out)!;
  const counts = m.sources.flatMap((s) => s.shards.map((sh) => sh.tokens));
  assert.ok(counts.length > corpus.files, 'some file has several shards');
  assert.ok(counts.every((c) => c <= 1000));
  assert.deepEqual(readAll(out), corpus.expected);
});

test('tokenize: a long .txt is cut at line starts without losing or repeating text', async () => {
  const root = tempDir();
  const line = 'Zeile mit Umlauten äöü und 🙂 emoji, then spaces   and\ttabs.\n';
  const text = line.repeat(Math.ceil((5 << 20) / line.length)) + '  indented last line';
  const file = path.join(root, 'big.txt');
  fs.writeFileSync(file, text);
  // With progress: the final progress line, then the summary.
  const written: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((chunk: string) => { written.push(String(chunk)); return true; }) as typeof process.stderr.write;
  try {
    await tokenizeCorpus({ inputs: [file], output: path.join(root, 'out'), tokenizer: { kind: 'bytes' }, workers: 0 });
  } finally {
    process.stderr.write = write;
  }
  const lines = written.join('').split('\n').filter((l) => l !== '');
  const mb = (Buffer.byteLength(text) / 1e6).toFixed(1);
  assert.match(lines[lines.length - 2]!, new RegExp(`^tokenize: 100\\.0% ${mb}/${mb} MB, [\\d.]+ MB/s, [\\d,]+ tokens/s, 1 docs, ETA 0s$`));
  assert.match(lines[lines.length - 1]!, /^tokenize: 1 file\(s\) tokenized, 0 already done; 1 documents, [\d,]+ tokens in/);
  for (const l of lines.slice(0, -1)) assert.match(l, /^tokenize: \d+\.\d% /);
  const got = readAllTyped(path.join(root, 'out'));
  const want = encodeBytes(text);
  assert.equal(got.length, want.length + 1);
  assert.ok(Buffer.from(got.buffer, 0, want.length * 4).equals(Buffer.from(want.buffer)));
  assert.equal(got[got.length - 1], BYTE_EOS_ID);
});

test('tokenize: resume redoes only unfinished files', async () => {
  const root = tempDir();
  const corpus = makeCorpus(root);
  const out = path.join(root, 'out');
  await tokenizeCorpus({ inputs: corpus.inputs, output: out, tokenizer: { kind: 'bytes' }, workers: 2, progress: false });
  const m = readManifest(out)!;
  const stamp = (f: string): string => { const s = fs.statSync(path.join(out, f)); return `${s.ino}:${s.mtimeMs}`; };
  const before = new Map(m.sources.flatMap((s) => s.shards.map((sh) => [sh.file, stamp(sh.file)] as const)));
  // Interrupted run: the manifest never got c.jsonl.zst, and a partial shard of it was left behind.
  const victim = m.sources.find((s) => s.source.endsWith('c.jsonl.zst'))!;
  m.sources = m.sources.filter((s) => s !== victim);
  fs.writeFileSync(path.join(out, 'manifest.json'), JSON.stringify(m));
  for (const sh of victim.shards) fs.rmSync(path.join(out, sh.file));
  const partial = path.join(out, victim.shards[0]!.file + '.partial');
  fs.writeFileSync(partial, 'garbage from a killed run');

  const summary = await tokenizeCorpus({ inputs: corpus.inputs, output: out, tokenizer: { kind: 'bytes' }, workers: 2, progress: false });
  assert.equal(summary.filesAlreadyDone, corpus.files - 1);
  assert.equal(summary.documents, 301);
  assert.ok(!fs.existsSync(partial));
  assert.deepEqual(readAll(out), corpus.expected);
  for (const s of readManifest(out)!.sources) {
    if (s.source === victim.source) continue;
    for (const sh of s.shards) assert.equal(stamp(sh.file), before.get(sh.file), `${sh.file} was not rewritten`);
  }

  // A third run has nothing to do; a changed input is redone.
  const again = await tokenizeCorpus({ inputs: corpus.inputs, output: out, tokenizer: { kind: 'bytes' }, workers: 2, progress: false });
  assert.equal(again.filesAlreadyDone, corpus.files);
  assert.equal(again.tokens, 0);
  const extra = corpus.inputs[1]!;
  fs.writeFileSync(extra, 'extra, longer now');
  const changed = await tokenizeCorpus({ inputs: corpus.inputs, output: out, tokenizer: { kind: 'bytes' }, workers: 1, progress: false });
  assert.equal(changed.filesAlreadyDone, corpus.files - 1);
  assert.equal(changed.tokens, 'extra, longer now'.length + 1);

  await assert.rejects(tokenizeCorpus({ inputs: corpus.inputs, output: out, tokenizer: { kind: 'hf', path: path.join(root, 'none.json') }, progress: false }),
    /none\.json does not exist/);
  const hfDir = path.join(root, 'hf');
  fs.mkdirSync(hfDir);
  fs.writeFileSync(path.join(hfDir, 'tokenizer.json'), JSON.stringify(byteLevelBpeFromMerges([['a', 'b']], ['<eos>']).json));
  await assert.rejects(tokenizeCorpus({ inputs: corpus.inputs, output: out, tokenizer: { kind: 'hf', path: hfDir, eosToken: '<eos>' }, progress: false }),
    /was tokenized with a different tokenizer.*use a new output folder/);
});

test('tokenize: bad JSONL lines name file:line, or are skipped and counted', async () => {
  const root = tempDir();
  const file = path.join(root, 'bad.jsonl');
  fs.writeFileSync(file, ['{"text": "ok 1"}', '{"text": "ok 2"}', '{"text": broken', '{"title": "no text"}', '{"text": 5}', '[1]', '{"text": "ok 3"}'].join('\n'));
  for (const workers of [1, 0]) {
    await assert.rejects(tokenizeCorpus({ inputs: [file], output: path.join(root, `out${workers}`), tokenizer: { kind: 'bytes' }, workers, progress: false }),
      (e: Error) => e.message.startsWith(`${file}:3: not valid JSON`) && e.message.includes('--skip-bad-lines'));
  }
  const out = path.join(root, 'skip');
  const s = await tokenizeCorpus({ inputs: [file], output: out, tokenizer: { kind: 'bytes' }, workers: 1, skipBadLines: true, progress: false });
  assert.equal(s.skippedLines, 4);
  assert.deepEqual(s.skippedExamples, [`${file}:3`, `${file}:4`, `${file}:5`, `${file}:6`]);
  assert.deepEqual(s.ignoredFiles, []);
  assert.equal(s.documents, 3);
  // More than five: the first five, in input order.
  const many = path.join(root, 'many');
  fs.mkdirSync(many);
  fs.writeFileSync(path.join(many, 'a.jsonl'), 'x\n{"text": "a"}\ny\n');
  fs.writeFileSync(path.join(many, 'b.jsonl'), 'p\nq\nr\ns\n');
  fs.writeFileSync(path.join(many, 'notes.csv'), 'not an input');
  const sm = await tokenizeCorpus({ inputs: [many], output: path.join(root, 'many-out'), tokenizer: { kind: 'bytes' }, workers: 2, skipBadLines: true, progress: false });
  assert.equal(sm.skippedLines, 6);
  const a = path.join(many, 'a.jsonl'), b = path.join(many, 'b.jsonl');
  assert.deepEqual(sm.skippedExamples, [`${a}:1`, `${a}:3`, `${b}:1`, `${b}:2`, `${b}:3`]);
  assert.deepEqual(sm.ignoredFiles, [path.join(many, 'notes.csv')]);
  assert.deepEqual(readAll(out), docsTokens(['ok 1', 'ok 2', 'ok 3']));
  assert.equal(readManifest(out)!.sources[0]!.skippedLines, 4);

  const noText = path.join(root, 'notext.jsonl');
  fs.writeFileSync(noText, '{"text": "a"}\n{"body": "b"}\n');
  await assert.rejects(tokenizeCorpus({ inputs: [noText], output: path.join(root, 'o2'), tokenizer: { kind: 'bytes' }, workers: 0, progress: false }),
    new RegExp(`${noText.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:2: no "text" field`));
});

test('tokenize: missing, unsupported and corrupt inputs', async () => {
  const root = tempDir();
  const missing = path.join(root, 'nope.jsonl');
  await assert.rejects(tokenizeCorpus({ inputs: [missing], output: path.join(root, 'o'), tokenizer: { kind: 'bytes' }, progress: false }),
    new RegExp(`input ${missing.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} does not exist`));
  const csv = path.join(root, 'x.csv');
  fs.writeFileSync(csv, 'a,b');
  assert.throws(() => listInputs([csv]), /x\.csv: unsupported file type; use one of \.txt, \.txt\.zst, \.jsonl, \.jsonl\.zst/);
  const emptyDir = path.join(root, 'empty');
  fs.mkdirSync(emptyDir);
  assert.throws(() => listInputs([emptyDir]), /holds no \.txt/);
  const cut = path.join(root, 'cut.jsonl.zst');
  fs.writeFileSync(cut, Buffer.from(SMALL_JSONL_ZST_BASE64, 'base64').subarray(0, 200));
  await assert.rejects(tokenizeCorpus({ inputs: [cut], output: path.join(root, 'o3'), tokenizer: { kind: 'bytes' }, workers: 1, progress: false }),
    (e: Error) => e.message.includes(cut) && /zstd data is corrupt or truncated/.test(e.message));
});

test('tokenize: an HF tokenizer.json in the worker threads', async () => {
  const root = tempDir();
  const hfDir = path.join(root, 'hf');
  fs.mkdirSync(hfDir);
  const built = byteLevelBpeFromMerges([['t', 'h'], ['th', 'e'], ['Ġ', 'c'], ['Ġc', 'a'], ['Ġca', 't']], ['<|endoftext|>']);
  fs.writeFileSync(path.join(hfDir, 'tokenizer.json'), JSON.stringify(built.json));
  fs.writeFileSync(path.join(hfDir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<|endoftext|>' }));
  const a = path.join(root, 'a.jsonl');
  const b = path.join(root, 'b.txt');
  fs.writeFileSync(a, jsonl(['the cat', 'thee cats']));
  fs.writeFileSync(b, 'the cat');
  const out = path.join(root, 'out');
  const s = await tokenizeCorpus({ inputs: [a, b], output: out, tokenizer: { kind: 'hf', path: hfDir }, workers: 2, progress: false });
  assert.equal(s.documents, 3);
  assert.deepEqual(readAll(out), [257, 260, 261, 257, 101, 260, 115, 261, 257, 260, 261]);
  const m = readManifest(out)!;
  assert.equal(m.tokenizer.vocabSize, 262);
  assert.equal(m.tokenizer.eosId, (await loadHfTokenizer(hfDir)).eosId);
  assert.match(m.tokenizer.fingerprint, /^sha256:[0-9a-f]{64}$/);
});
