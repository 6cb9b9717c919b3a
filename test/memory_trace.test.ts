// Device memory of one bench training step (4 layers of DeepSeek-V2-Lite, 4×2048 tokens, bf16,
// f32 masters) through the CUDA caching allocator's rules without a GPU (helpers/memory_trace_backend.ts),
// against the memory estimator (parallel/memory_estimate.ts) at the same shapes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { loadDeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { estimateMemory } from '../src/parallel/memory_estimate.js';
import { defaultTrainConfig, mergeTrainConfig } from '../src/train/config.js';
import { Training, type BatchSource } from '../src/train/trainer.js';
import { packageRoot } from '../src/package_root.js';
import { memoryTraceBackend } from './helpers/memory_trace_backend.js';

const GiB = 2 ** 30;

test('bench step through the CUDA allocator rules: peak against the estimator', () => {
  const model = loadDeepseekV2Config(path.join(packageRoot(), 'configs', 'deepseek-v2-lite.json'));
  model.num_hidden_layers = 4;
  const S = 2048, B = 4;
  const cfg = mergeTrainConfig(defaultTrainConfig(), {
    run_dir: '/nonexistent-unused', device: 'cpu', steps: 20, seq_len: S, micro_batch_size: B, global_batch_size: B, checkpoint_every: 0,
  }, 'test');
  const be = memoryTraceBackend(3);
  const training = new Training(cfg, model, be);
  const data: BatchSource = { vocabSize: model.vocab_size, batch: () => ({ inputs: new Int32Array(B * S), labels: new Int32Array(B * S) }) };
  const peaks: number[] = [];
  for (let step = 0; step < 4; step++) {
    const m = training.step(step, data);
    peaks.push(m.peakMemoryBytes);
    console.log(`# step ${step}: peak ${(m.peakMemoryBytes / GiB).toFixed(3)} GiB, live after ${(m.liveMemoryBytes / GiB).toFixed(3)} GiB, reserved ${(be.memoryStats().reservedBytes / GiB).toFixed(3)} GiB`);
    console.log(`#   at ${be.peakAt}`);
    if (step === 0) for (const [at, b] of be.peakBySite.slice(0, 40)) console.log(`#     ${(b / 2 ** 20).toFixed(0).padStart(7)} MiB  ${at}`);
  }
  training.dispose();
  const [est] = estimateMemory({ model, mesh: { pp: 1, dp: 1, cp: 1, ep: 1 }, seqLen: S, microBatchSize: B, microBatches: 1, precision: 'bf16', device: 'cuda' });
  const p = est!.parts;
  console.log(`# estimate: peak ${(est!.peakBytes / GiB).toFixed(3)} GiB: persistent ${(est!.persistentBytes / GiB).toFixed(3)}, activations ${(p.activations / GiB).toFixed(3)}, logits ${(p.logits / GiB).toFixed(3)}, workspace ${(p.workspace / GiB).toFixed(3)}`);
  assert.ok(peaks.length === 4);
});
