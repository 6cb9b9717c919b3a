// Sharded safetensors (HF layout): the shard plan honours the size limit, a sharded write reads
// back bit-exact through the index (folder, index file) and a lone model.safetensors opens the
// same way; an unfinished save has no index; an index that names a missing shard or a tensor
// its shard lacks is an Error naming both.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { writeSafetensors, type SafetensorsTensorSpec } from '../src/io/safetensors.js';
import {
  planSafetensorsShards, ShardedSafetensorsWriter, openShardedSafetensors, readSafetensorsIndex, writeSafetensorsIndex, INDEX_FILE,
} from '../src/io/safetensors_index.js';

const made: string[] = [];
after(() => { for (const d of made) fs.rmSync(d, { recursive: true, force: true }); });
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-sti-'));
  made.push(d);
  return d;
}

const specs: SafetensorsTensorSpec[] = [
  { name: 'model.embed_tokens.weight', dtype: 'BF16', shape: [50, 8] }, // 800 bytes
  { name: 'model.layers.0.mlp.experts.0.up_proj.weight', dtype: 'BF16', shape: [8, 16] }, // 256
  { name: 'model.layers.0.mlp.experts.1.up_proj.weight', dtype: 'BF16', shape: [8, 16] }, // 256
  { name: 'model.norm.weight', dtype: 'F32', shape: [8] }, // 32
  { name: 'lm_head.weight', dtype: 'BF16', shape: [50, 8] }, // 800
  { name: 'empty', dtype: 'F32', shape: [0] }, // 0
];

test('sharded safetensors: the plan keeps shards under the limit; a big tensor gets its own', () => {
  const plan = planSafetensorsShards(specs, 600);
  assert.deepEqual(plan.map((p) => p.specs.map((s) => s.name)), [
    ['model.embed_tokens.weight'],
    ['model.layers.0.mlp.experts.0.up_proj.weight', 'model.layers.0.mlp.experts.1.up_proj.weight', 'model.norm.weight'],
    ['lm_head.weight', 'empty'],
  ]);
  assert.deepEqual(plan.map((p) => p.file), ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors']);
  assert.deepEqual(plan.map((p) => p.dataBytes), [800, 544, 800]);
  assert.equal(planSafetensorsShards(specs, 1e9).length, 1);
});

test('sharded safetensors: write, index, read back bit-exact', () => {
  const dir = path.join(tempDir(), 'ckpt');
  const data = new Map(specs.map((s) => [s.name, randomBytes(s.shape.reduce((a, b) => a * b, 1) * (s.dtype === 'F32' ? 4 : 2))]));
  const w = ShardedSafetensorsWriter.create(dir, specs, { maxShardBytes: 600, metadata: { format: 'pt' }, indexMetadata: { step: 100 } });
  // Any tensor order; the embedding in two pieces.
  for (const s of [...specs].reverse()) {
    const bytes = data.get(s.name)!;
    if (s.name.includes('embed')) { w.write(s.name, bytes.subarray(0, 100)); w.write(s.name, bytes.subarray(100)); } else w.write(s.name, bytes);
  }
  assert.ok(!fs.existsSync(path.join(dir, INDEX_FILE)), 'the index comes last');
  const indexPath = w.finish();
  assert.equal(indexPath, path.join(dir, INDEX_FILE));
  const index = readSafetensorsIndex(indexPath);
  assert.equal(index.metadata.total_size, 2144);
  assert.equal(index.metadata['step'], 100);
  assert.equal(index.weight_map['lm_head.weight'], 'model-00003-of-00003.safetensors');
  assert.deepEqual(fs.readdirSync(dir).sort(), [INDEX_FILE, ...planSafetensorsShards(specs, 600).map((p) => p.file)].sort());

  for (const target of [dir, indexPath]) {
    const m = openShardedSafetensors(target);
    assert.deepEqual([...m.tensors.keys()].sort(), specs.map((s) => s.name).sort());
    for (const s of specs) assert.ok(Buffer.from(m.readBytes(s.name)).equals(data.get(s.name)!), s.name);
    assert.equal(m.tensors.get('model.norm.weight')!.file, 'model-00002-of-00003.safetensors');
    assert.equal(m.indexMetadata['total_size'], 2144);
    m.close();
  }
});

test('sharded safetensors: a lone model.safetensors opens like a sharded one', () => {
  const dir = tempDir();
  writeSafetensors(path.join(dir, 'model.safetensors'), [{ name: 'x', dtype: 'F32', shape: [2], data: Float32Array.of(1, 2) }]);
  const m = openShardedSafetensors(dir);
  assert.deepEqual(Array.from(m.readTensor('x').data as Float32Array), [1, 2]);
  m.close();
  const single = openShardedSafetensors(path.join(dir, 'model.safetensors'));
  assert.equal(single.tensors.get('x')!.file, 'model.safetensors');
  single.close();
});

test('sharded safetensors: unfinished saves and inconsistent indexes are Errors', () => {
  const dir = path.join(tempDir(), 'ckpt');
  const w = ShardedSafetensorsWriter.create(dir, specs, { maxShardBytes: 600 });
  w.write('model.embed_tokens.weight', new Uint8Array(800));
  assert.throws(() => openShardedSafetensors(dir), /has neither model\.safetensors\.index\.json nor model\.safetensors \(an unfinished save\?\)/);
  w.abort();
  assert.deepEqual(fs.readdirSync(dir).filter((n) => n.endsWith('.partial')), []);

  const ok = path.join(tempDir(), 'ok');
  const v = ShardedSafetensorsWriter.create(ok, specs.slice(0, 2), { maxShardBytes: 600 });
  v.write(specs[0]!.name, new Uint8Array(800));
  v.write(specs[1]!.name, new Uint8Array(256));
  const indexPath = v.finish();
  const index = readSafetensorsIndex(indexPath);
  writeSafetensorsIndex(indexPath, { ...index, weight_map: { ...index.weight_map, ghost: 'model-00001-of-00002.safetensors' } });
  assert.throws(() => openShardedSafetensors(ok), (e: Error) => e.message.includes(indexPath) && /puts tensor ghost in model-00001-of-00002\.safetensors, but that file has no such tensor/.test(e.message));
  writeSafetensorsIndex(indexPath, { ...index, weight_map: { ...index.weight_map, extra: 'model-00009-of-00009.safetensors' } });
  assert.throws(() => openShardedSafetensors(ok), /names shard model-00009-of-00009\.safetensors, which does not exist/);
  writeSafetensorsIndex(indexPath, { ...index, weight_map: { a: '../escape.safetensors' } });
  assert.throws(() => openShardedSafetensors(ok), /not a file name in the same folder/);
  fs.writeFileSync(indexPath, '{"weight_map": ');
  assert.throws(() => openShardedSafetensors(ok), /cannot be read as JSON/);
  assert.throws(() => openShardedSafetensors(path.join(ok, 'missing')), /checkpoint .*missing does not exist/);
});
