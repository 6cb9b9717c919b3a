// The demo's data folder: made once, then reused as it is (manifest untouched) when the run
// folder is started again, moved or copied, so the data fingerprint never changes; made again
// when damaged; a folder in the uint32 layout of earlier versions is reused. Past one epoch
// (576 steps at the demo's defaults), the next epoch visits every window again in a new order.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { prepareDemoData } from '../src/data/demo_data.js';
import { TokenDataset } from '../src/data/loader.js';
import { readManifest, writeManifest } from '../src/data/manifest.js';
import { openShard, ShardWriter } from '../src/data/shards.js';

const made: string[] = [];
after(() => { for (const d of made) fs.rmSync(d, { recursive: true, force: true }); });
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-demo-'));
  made.push(d);
  return d;
}

const SEED = 1234;
const fingerprint = (dir: string): string => {
  const d = TokenDataset.open({ dir, seqLen: 64, seed: SEED });
  d.close();
  return d.fingerprint;
};

test('demo data: made once, reused when started again, moved or copied; remade when damaged', async () => {
  const first = path.join(tempDir(), 'run');
  const a = await prepareDemoData({ runDir: first, seed: SEED });
  assert.equal(a.made, true);
  const fp = fingerprint(a.dir);
  const manifestText = fs.readFileSync(path.join(a.dir, 'manifest.json'), 'utf8');
  const again = await prepareDemoData({ runDir: first, seed: SEED });
  assert.equal(again.made, false);
  assert.equal(again.entropy, a.entropy);
  assert.equal(fs.readFileSync(path.join(a.dir, 'manifest.json'), 'utf8'), manifestText, 'the manifest is not rewritten');

  const moved = path.join(tempDir(), 'renamed-run');
  fs.renameSync(first, moved);
  const m = await prepareDemoData({ runDir: moved, seed: SEED });
  assert.equal(m.made, false);
  assert.equal(fingerprint(m.dir), fp);
  assert.equal(fs.readFileSync(path.join(m.dir, 'manifest.json'), 'utf8'), manifestText);

  const copied = path.join(tempDir(), 'copy');
  fs.cpSync(moved, copied, { recursive: true });
  const c = await prepareDemoData({ runDir: copied, seed: SEED });
  assert.equal(c.made, false);
  assert.equal(fingerprint(c.dir), fp);

  // A truncated shard: made again, with the same content and so the same fingerprint.
  const shard = readManifest(c.dir)!.sources[0]!.shards[0]!.file;
  fs.truncateSync(path.join(c.dir, shard), 1000);
  const remade = await prepareDemoData({ runDir: copied, seed: SEED });
  assert.equal(remade.made, true);
  assert.equal(fingerprint(remade.dir), fp);
  // Another seed's corpus is other data.
  const other = await prepareDemoData({ runDir: copied, seed: SEED + 1 });
  assert.equal(other.made, true);
  assert.notEqual(fingerprint(other.dir), fp);
});

test('demo data: a folder in the earlier uint32 layout (no content hashes) is reused', async () => {
  const run = path.join(tempDir(), 'run');
  const { dir } = await prepareDemoData({ runDir: run, seed: SEED });
  const manifest = readManifest(dir)!;
  const sh = manifest.sources[0]!.shards[0]!;
  const r = openShard(path.join(dir, sh.file));
  const tokens = r.read(0, r.tokenCount);
  r.close();
  const w = ShardWriter.create(path.join(dir, sh.file), { vocabSize: 257, dtype: 'uint32' });
  w.append(tokens);
  w.finish();
  delete sh.sha256;
  writeManifest(dir, manifest);
  const fp = fingerprint(dir);
  const again = await prepareDemoData({ runDir: run, seed: SEED });
  assert.equal(again.made, false);
  const reopened = openShard(path.join(dir, sh.file));
  assert.equal(reopened.dtype, 'uint32');
  reopened.close();
  assert.equal(fingerprint(dir), fp);
});

test('demo data: epoch 2 visits every window again, in another order; step k stays a function of (seed, k)', async () => {
  const { dir } = await prepareDemoData({ runDir: path.join(tempDir(), 'run'), seed: SEED });
  const data = TokenDataset.open({ dir, seqLen: 64, seed: SEED });
  const n = data.windows;
  assert.equal(Math.floor(n / 16), 576, 'the demo defaults (S = 64, 16 sequences a step) make 576 steps an epoch');
  const epoch = (e: number): number[] => Array.from({ length: n }, (_, i) => data.windowAtSlot(e * n + i).window);
  const e0 = epoch(0), e1 = epoch(1);
  const all = Array.from({ length: n }, (_, i) => i);
  assert.deepEqual([...e0].sort((x, y) => x - y), all);
  assert.deepEqual([...e1].sort((x, y) => x - y), all);
  const same = e0.filter((w, i) => w === e1[i]).length;
  assert.ok(same < n / 100, `epoch 2's order differs from epoch 1's (${same} of ${n} windows in the same place)`);
  // Step 600 (epoch 2) read first by a fresh loader equals the same step read after others.
  const b600 = data.batch({ step: 600, globalBatch: 16, microBatch: 16 });
  assert.deepEqual(b600.epochs, Array(16).fill(1));
  assert.deepEqual(b600.windows, e1.slice(600 * 16 - n, 601 * 16 - n));
  const fresh = TokenDataset.open({ dir, seqLen: 64, seed: SEED });
  assert.deepEqual(fresh.batch({ step: 600, globalBatch: 16, microBatch: 16 }), b600);
  fresh.close();
  data.close();
});
