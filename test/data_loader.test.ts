// Loader: the Feistel permutation is a bijection for awkward sizes; windows of S+1 tokens with
// labels shifted by one, read across shard boundaries; the batch of step k is a pure function of
// (data, S, seed, k) whatever was read before; data-parallel ranks and micro-batches partition
// the global batch; one epoch visits every window once and the next epoch reshuffles; the data
// fingerprint depends on the content, not on file names or folders; clear Errors for data that
// is too small (naming --max_epochs) and for shards that disagree with the manifest.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FeistelPermutation } from '../src/data/permutation.js';
import { TokenDataset } from '../src/data/loader.js';
import { ShardWriter } from '../src/data/shards.js';
import { writeManifest, MANIFEST_FORMAT, MANIFEST_VERSION, type TokenManifest } from '../src/data/manifest.js';

test('permutation: bijection with inverse for awkward sizes; seed and epoch change it', () => {
  for (const n of [1, 2, 3, 5, 16, 17, 1000, 4099]) {
    const p = new FeistelPermutation(n, 42, 0);
    const seen = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      const x = p.at(i);
      assert.ok(x >= 0 && x < n);
      assert.equal(seen[x], 0, `n=${n}: ${x} twice`);
      seen[x] = 1;
      assert.equal(p.indexOf(x), i);
    }
  }
  const order = (seed: number, epoch: number): number[] => Array.from({ length: 1000 }, (_, i) => new FeistelPermutation(1000, seed, epoch).at(i));
  const base = order(42, 0);
  assert.deepEqual(order(42, 0), base);
  assert.notDeepEqual(order(42, 1), base);
  assert.notDeepEqual(order(43, 0), base);
  // Shuffled, not shifted: few fixed points and neighbours rarely stay neighbours.
  assert.ok(base.filter((x, i) => x === i).length < 10);
  assert.ok(base.filter((x, i) => i > 0 && Math.abs(x - base[i - 1]!) === 1).length < 20);
});

const made: string[] = [];
after(() => { for (const d of made) fs.rmSync(d, { recursive: true, force: true }); });
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-loader-'));
  made.push(d);
  return d;
}

/** A data folder whose token at stream position p is p (vocab large enough), in shards of the given sizes. */
function makeData(shardSizes: number[], vocabSize = 1 << 20, dir = tempDir(), name = (i: number) => `s${i}.tokens`): string {
  const manifest: TokenManifest = {
    format: MANIFEST_FORMAT, version: MANIFEST_VERSION,
    tokenizer: { name: 'test', vocabSize, eosId: 0, fingerprint: 'test' },
    sources: [],
  };
  let p = 0;
  shardSizes.forEach((size, i) => {
    const file = name(i);
    const w = ShardWriter.create(path.join(dir, file), { vocabSize });
    w.append(Uint32Array.from({ length: size }, () => p++));
    const { sha256 } = w.finish();
    // Source names sort in creation order (a, b, c, ...), so the stream is s0, s1, ...
    manifest.sources.push({ source: `/src/${String.fromCharCode(97 + i)}`, bytes: 0, mtimeMs: 0, documents: 1, tokens: size, skippedLines: 0, shards: [{ file, tokens: size, sha256 }] });
  });
  writeManifest(dir, manifest);
  return dir;
}

test('loader: windows of S+1 tokens, labels shifted by one, across shard boundaries', () => {
  const S = 7;
  const dir = makeData([10, 3, 25, 1, 40]); // 79 tokens → 9 windows of 8, 7 tokens unused
  const data = TokenDataset.open({ dir, seqLen: S, seed: 1 });
  assert.equal(data.tokens, 79);
  assert.equal(data.windows, 9);
  const { inputs, labels, windows } = data.batch({ step: 0, globalBatch: 9, microBatch: 9 });
  assert.deepEqual([...windows].sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  for (let row = 0; row < 9; row++) {
    const first = windows[row]! * (S + 1);
    for (let i = 0; i < S; i++) {
      assert.equal(inputs[row * S + i], first + i);
      assert.equal(labels[row * S + i], first + i + 1);
    }
  }
  assert.ok(inputs instanceof Int32Array && labels instanceof Int32Array);
  data.close();
});

test('loader: batch k is a pure function of (seed, k); ranks and micro-batches partition it', () => {
  const dir = makeData([500, 333, 1200]);
  const open = (seed: number): TokenDataset => TokenDataset.open({ dir, seqLen: 15, seed, maxOpenShards: 1 });
  const a = open(7);
  const b = open(7);
  for (let k = 0; k < 20; k++) b.batch({ step: k, globalBatch: 8, microBatch: 4, microIndex: 1 }); // b has read other things first
  for (const k of [0, 3, 11]) {
    const x = a.batch({ step: k, globalBatch: 8, microBatch: 8 });
    const y = b.batch({ step: k, globalBatch: 8, microBatch: 8 });
    assert.deepEqual(x, y);
    // 2 data-parallel ranks × 2 micro-batches of 2 = the same 8 rows in the same order.
    const rows: number[] = [];
    const inputs: number[] = [];
    for (let r = 0; r < 2; r++) {
      for (let m = 0; m < 2; m++) {
        const part = b.batch({ step: k, globalBatch: 8, microBatch: 2, microIndex: m, dpRank: r, dpSize: 2 });
        rows.push(...part.windows);
        inputs.push(...part.inputs);
      }
    }
    assert.deepEqual(rows, x.windows);
    assert.deepEqual(inputs, Array.from(x.inputs));
  }
  assert.notDeepEqual(open(8).batch({ step: 0, globalBatch: 8, microBatch: 8 }).windows, a.batch({ step: 0, globalBatch: 8, microBatch: 8 }).windows);
  assert.equal(a.fingerprint, b.fingerprint);
  assert.notEqual(open(8).fingerprint, a.fingerprint);
  assert.throws(() => a.batch({ step: 0, globalBatch: 8, microBatch: 3 }), /global batch 8 must equal data-parallel size × micro-batch/);
});

test('loader: an epoch visits every window once; the next epoch reshuffles', () => {
  const dir = makeData([24 * 10]); // 10 windows of S+1 = 24... then G = 5 → 2 steps per epoch
  const data = TokenDataset.open({ dir, seqLen: 23, seed: 3 });
  assert.equal(data.windows, 10);
  const epoch0 = [...data.batch({ step: 0, globalBatch: 5, microBatch: 5 }).windows, ...data.batch({ step: 1, globalBatch: 5, microBatch: 5 }).windows];
  const e1 = [data.batch({ step: 2, globalBatch: 5, microBatch: 5 }), data.batch({ step: 3, globalBatch: 5, microBatch: 5 })];
  const epoch1 = e1.flatMap((b) => b.windows);
  assert.deepEqual([...epoch0].sort((x, y) => x - y), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.deepEqual([...epoch1].sort((x, y) => x - y), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.notDeepEqual(epoch1, epoch0);
  assert.deepEqual(e1[0]!.epochs, [1, 1, 1, 1, 1]);
  // A global batch may straddle two epochs: G = 3 over 10 windows.
  const straddle = data.batch({ step: 3, globalBatch: 3, microBatch: 3 });
  assert.deepEqual(straddle.epochs, [0, 1, 1]);
});

test('loader: too little data is an Error with the numbers and the fix', () => {
  const dir = makeData([100]);
  const data = TokenDataset.open({ dir, seqLen: 9, seed: 0 }); // 10 windows
  data.checkRun({ steps: 5, globalBatch: 2 });
  assert.throws(() => data.checkRun({ steps: 6, globalBatch: 2 }),
    /has 10 windows of S\+1 = 10 tokens \(100 tokens\); the run needs steps × global batch = 6 × 2 = 12 windows \(1\.20 epochs\), more than the 1 epoch\(s\) allowed; tokenize more text, lower the steps, batch size or sequence length, or allow more epochs \(--max_epochs 2, or 0 for no cap\)/);
  data.checkRun({ steps: 6, globalBatch: 2, maxEpochs: 2 });
  data.checkRun({ steps: 600, globalBatch: 2, maxEpochs: null });
  data.checkRun({ steps: 600, globalBatch: 2, maxEpochs: 0 });
  assert.equal(data.epochsFor(15, 2), 3);
  assert.throws(() => data.checkRun({ steps: 1, globalBatch: 11, maxEpochs: 100 }), /fewer than one global batch of 11 sequences/);
  assert.throws(() => TokenDataset.open({ dir, seqLen: 100, seed: 0 }), /holds 100 tokens, less than one window of S\+1 = 101/);
  const none = tempDir();
  assert.throws(() => TokenDataset.open({ dir: none, seqLen: 4, seed: 0 }), /has no manifest\.json; create it with moetrain tokenize/);
});

test('loader: shards that disagree with the manifest are Errors naming the shard', () => {
  const dir = makeData([50, 50], 1000);
  // Same size, but a token id beyond the vocabulary (bit rot).
  const f1 = path.join(dir, 's1.tokens');
  const bytes = fs.readFileSync(f1);
  bytes.writeUInt16LE(0xffff, 32 + 2 * 10); // a vocabulary of 1000 is stored as uint16
  fs.writeFileSync(f1, bytes);
  const data = TokenDataset.open({ dir, seqLen: 9, seed: 0 });
  assert.throws(() => { for (let w = 0; w < data.windows; w++) data.readWindow(w); },
    (e: Error) => e.message.includes(f1) && /token id 65535 at token 10, outside the vocabulary of 1000/.test(e.message));
  // A shard replaced by a shorter one.
  const f0 = path.join(dir, 's0.tokens');
  const w = ShardWriter.create(f0, { vocabSize: 1000 });
  w.append(new Uint32Array(40));
  w.finish();
  const fresh = TokenDataset.open({ dir, seqLen: 9, seed: 0 });
  assert.throws(() => fresh.readWindow(0), (e: Error) => e.message.includes(f0) && /holds 40 tokens .* says 50 tokens/.test(e.message));
  fs.rmSync(f0);
  assert.throws(() => TokenDataset.open({ dir, seqLen: 9, seed: 0 }).readWindow(0), /cannot open token shard .*s0\.tokens/);
});

test('loader: the fingerprint is the content, S and seed; never file names or folders', () => {
  const fp = (dir: string, seqLen = 9, seed = 0): string => TokenDataset.open({ dir, seqLen, seed }).fingerprint;
  const a = makeData([50, 70]);
  const renamed = makeData([50, 70], 1 << 20, tempDir(), (i) => `other-name-${i}.tokens`);
  assert.equal(fp(renamed), fp(a), 'other shard names, other folder, same tokens');
  // A moved copy of the folder.
  const moved = path.join(tempDir(), 'moved');
  fs.cpSync(a, moved, { recursive: true });
  fs.rmSync(a, { recursive: true });
  const before = fp(moved);
  assert.equal(fp(moved), before);
  assert.notEqual(fp(moved, 10), before, 'S is part of it');
  assert.notEqual(fp(moved, 9, 1), before, 'the seed is part of it');
  assert.notEqual(fp(makeData([70, 50])), before, 'the same tokens in other shards are another window layout');
  // One token changed, same counts: another fingerprint.
  const changed = makeData([50, 70]);
  const w = ShardWriter.create(path.join(changed, 's1.tokens'), { vocabSize: 1 << 20 });
  w.append(Uint32Array.from({ length: 70 }, (_, i) => (i === 69 ? 0 : 50 + i)));
  const m = JSON.parse(fs.readFileSync(path.join(changed, 'manifest.json'), 'utf8')) as TokenManifest;
  m.sources[1]!.shards[0]!.sha256 = w.finish().sha256;
  writeManifest(changed, m);
  assert.notEqual(fp(changed), before);
  // A manifest from before shards carried a hash: the file names stand in, as they always did,
  // so checkpoints of such runs still resume.
  const old = makeData([50, 70]);
  const om = JSON.parse(fs.readFileSync(path.join(old, 'manifest.json'), 'utf8')) as TokenManifest;
  for (const s of om.sources) for (const sh of s.shards) delete sh.sha256;
  writeManifest(old, om);
  const legacy = createHash('sha256').update('test|S=9|seed=0').update('|s0.tokens:50').update('|s1.tokens:70').digest('hex').slice(0, 16);
  assert.equal(fp(old), legacy);
});
