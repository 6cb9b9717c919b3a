// HF checkpoints: export → import → export is bit-exact; a model loaded from HF layout gives
// the same logits as the same weights loaded natively; a damaged checkpoint is a clear error.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { DeepseekV2 } from '../src/models/deepseek_v2.js';
import { formatHfConfig, parseDeepseekV2Config, type DeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { TINY_CONFIG_JSON } from '../src/models/tiny_config.js';
import { exportHf, importHf, loadWeightsInto } from '../src/train/hf_checkpoint.js';
import { Adam } from '../src/optim/adam.js';
import { saveCheckpoint } from '../src/train/checkpoint.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { noGrad } from '../src/autograd/tape.js';
import { tidy } from '../src/tensor/scope.js';

function sha(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of fs.readdirSync(dir).sort()) out[f] = fs.readFileSync(path.join(dir, f)).toString('base64');
  return out;
}

function logitsOf(config: DeepseekV2Config, dir: string): Float32Array {
  const be = new CpuBackend();
  const m = new DeepseekV2(config, be, 'f32');
  loadWeightsInto(m, dir);
  const ids = Array.from({ length: 2 * 9 }, (_, i) => (i * 37 + 5) % config.vocab_size);
  const out = noGrad(() => tidy(() => toHostF32(m.logits(fromHost(be, ids, [2, 9], 'i32')))));
  m.dispose();
  return out;
}

/** A temp folder holding config.json and a moetrain checkpoint of a freshly initialised model. */
function freshCheckpoint(config: DeepseekV2Config, seed: number) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-hf-'));
  const configPath = path.join(root, 'config.json');
  fs.writeFileSync(configPath, formatHfConfig(config));
  const be = new CpuBackend();
  const model = new DeepseekV2(config, be, 'f32');
  model.initialize(seed);
  const adam = new Adam(model.params, { type: 'adamw', lr: 1, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0 }, be);
  const ckpt = saveCheckpoint(path.join(root, 'ckpts'), 1, model, adam, { keep: 0, config: {} });
  model.dispose(); adam.dispose();
  return { root, configPath, ckpt };
}

for (const variant of ['q_proj', 'q_lora'] as const) {
  test(`HF export/import round trip is bit-exact and logits agree (${variant})`, () => {
    const raw = { ...TINY_CONFIG_JSON, ...(variant === 'q_lora' ? { q_lora_rank: 24 } : {}),
      rope_scaling: { type: 'yarn', factor: 4, original_max_position_embeddings: 64, beta_fast: 32, beta_slow: 1, mscale: 0.707, mscale_all_dim: 0.707 } };
    const config = parseDeepseekV2Config(raw, 'test config');
    const { root, configPath, ckpt } = freshCheckpoint(config, 5);
    // Small shards force a multi-file HF checkpoint with an index.
    exportHf(ckpt, path.join(root, 'hf1'), { dtype: 'bf16', maxShardBytes: 60_000, configPath });
    assert.ok(fs.existsSync(path.join(root, 'hf1', 'model.safetensors.index.json')));
    assert.ok(fs.readdirSync(path.join(root, 'hf1')).filter((f) => f.endsWith('.safetensors')).length > 1);
    importHf(path.join(root, 'hf1'), path.join(root, 'native'));
    exportHf(path.join(root, 'native'), path.join(root, 'hf2'), { dtype: 'bf16', maxShardBytes: 60_000, configPath: path.join(root, 'native', 'config.json') });
    assert.deepEqual(sha(path.join(root, 'hf2')), sha(path.join(root, 'hf1')), 'HF → moetrain → HF must reproduce every byte');
    // The same weights loaded from HF layout and from moetrain's native folder: identical logits.
    const fromHf = logitsOf(config, path.join(root, 'hf1')), fromNative = logitsOf(config, path.join(root, 'native'));
    assert.deepEqual(fromHf, fromNative);
    assert.ok(fromHf.every(Number.isFinite));
    fs.rmSync(root, { recursive: true, force: true });
  });
}

test('a truncated HF shard and a missing tensor are errors naming the file and tensor', () => {
  const config = parseDeepseekV2Config(TINY_CONFIG_JSON, 'tiny');
  const { root, configPath, ckpt } = freshCheckpoint(config, 1);
  exportHf(ckpt, path.join(root, 'hf'), { dtype: 'bf16', maxShardBytes: 1e9, configPath });
  const shard = fs.readdirSync(path.join(root, 'hf')).find((f) => f.endsWith('.safetensors'))!;
  const file = path.join(root, 'hf', shard);
  fs.truncateSync(file, fs.statSync(file).size - 100);
  assert.throws(() => importHf(path.join(root, 'hf'), path.join(root, 'out')), (e: Error) => e.message.includes(shard));
  assert.ok(!fs.existsSync(path.join(root, 'out')), 'no output folder may be left behind');
  // A config with one more layer than the checkpoint holds: the missing tensor is named.
  fs.writeFileSync(configPath, formatHfConfig({ ...config, num_hidden_layers: 3 }));
  assert.throws(() => exportHf(ckpt, path.join(root, 'hf3'), { dtype: 'bf16', maxShardBytes: 1e9, configPath }), /missing tensor model\.layers\.2\./);
  fs.rmSync(root, { recursive: true, force: true });
});
