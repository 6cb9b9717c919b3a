// Device memory of bench train's step (4 layers of DeepSeek-V2-Lite, 4×2048 tokens, bf16, f32
// masters, AdamW) through the CUDA caching allocator's own rules, without a GPU
// (helpers/memory_trace_backend.ts), against the default recipe's target (TARGETS.md: peak
// ≤ 45 GiB) and against the memory estimator (parallel/memory_estimate.ts) at the same shapes.
// Before the chunked lm_head + cross-entropy and the recomputed activations this trace gave
// 49.01 GiB where the GPU measured 48.84 GiB (H100, 2026-12-06), so it is a close model of the
// GPU's peak (it lacks only cuBLASLt's and the attention kernels' workspaces).
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
const gib = (b: number) => (b / GiB).toFixed(3);

test('bench step through the CUDA allocator rules: peak under 45 GiB, and the estimator within 2% of it', () => {
  const model = loadDeepseekV2Config(path.join(packageRoot(), 'configs', 'deepseek-v2-lite.json'));
  model.num_hidden_layers = 4;
  const S = 2048, B = 4;
  const cfg = mergeTrainConfig(defaultTrainConfig(), {
    run_dir: '/nonexistent-unused', device: 'cpu', steps: 20, seq_len: S, micro_batch_size: B, global_batch_size: B, checkpoint_every: 0,
  }, 'test');
  const be = memoryTraceBackend(3);
  const training = new Training(cfg, model, be);
  const data: BatchSource = { vocabSize: model.vocab_size, batch: () => ({ inputs: new Int32Array(B * S), labels: new Int32Array(B * S) }) };
  let peak = 0, persistent = 0;
  for (let step = 0; step < 4; step++) {
    const phases: string[] = [];
    const m = training.step(step, data, {
      phase: (name, fn) => { const r = fn(); phases.push(`${name} ${gib(be.memoryStats().peakBytes)}`); return r; },
    });
    peak = Math.max(peak, m.peakMemoryBytes);
    persistent = m.liveMemoryBytes;
    console.log(`# step ${step}: peak ${gib(m.peakMemoryBytes)} GiB (running peak after ${phases.join(', ')}), live after ${gib(m.liveMemoryBytes)} GiB`);
    if (step === 0) {
      console.log(`#   the peak: ${be.peakAt}`);
      for (const [at, b] of be.peakBySite.slice(0, 16)) console.log(`#     ${(b / 2 ** 20).toFixed(0).padStart(7)} MiB  ${at}`);
    }
  }
  training.dispose();
  const [est] = estimateMemory({ model, mesh: { pp: 1, dp: 1, cp: 1, ep: 1 }, seqLen: S, microBatchSize: B, microBatches: 1, precision: 'bf16', device: 'cuda' });
  const p = est!.parts;
  console.log(`# estimate: peak ${gib(est!.peakBytes)} GiB: persistent ${gib(est!.persistentBytes)}, activations ${gib(p.activations)}, logits ${gib(p.logits)}, workspace ${gib(p.workspace)}`);
  assert.ok(peak <= 45 * GiB, `traced peak ${gib(peak)} GiB`);
  assert.ok(Math.abs(est!.persistentBytes / persistent - 1) < 0.005, `persistent: estimated ${gib(est!.persistentBytes)} vs traced ${gib(persistent)} GiB`);
  assert.ok(Math.abs(est!.peakBytes / peak - 1) < 0.02, `peak: estimated ${gib(est!.peakBytes)} vs traced ${gib(peak)} GiB`);
});
