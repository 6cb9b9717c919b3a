// Leak test: 1,000 optimizer steps of the tiny model on the CPU (Training.step driven directly,
// with a checkpoint written every 250 steps), and after step 10 the live tensor handles, the
// unreleased autograd nodes and the backend's live bytes stay exactly flat. The checker is first
// shown to catch a planted leak of each kind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { beginNode, liveGradNodeCount } from '../src/autograd/tape.js';
import { tinyConfig } from '../src/models/tiny_config.js';
import { full } from '../src/ops/create.js';
import { keep, tidy } from '../src/tensor/scope.js';
import { liveTensorCount } from '../src/tensor/tensor.js';
import { defaultTrainConfig, mergeTrainConfig } from '../src/train/config.js';
import { saveCheckpoint } from '../src/train/checkpoint.js';
import { Training } from '../src/train/trainer.js';
import { fixedBatches } from './helpers/fixed_batches.js';

interface Sample { tensors: number; nodes: number; bytes: number }

/** The first step after `from` whose counts differ from those at `from`, or null. */
function firstChange(samples: readonly Sample[], from: number): { step: number; was: Sample; now: Sample } | null {
  const was = samples[from]!;
  for (let s = from + 1; s < samples.length; s++) {
    const now = samples[s]!;
    if (now.tensors !== was.tensors || now.nodes !== was.nodes || now.bytes !== was.bytes) return { step: s, was, now };
  }
  return null;
}

const sample = (be: CpuBackend): Sample => ({ tensors: liveTensorCount(), nodes: liveGradNodeCount(), bytes: be.memoryStats().liveBytes });

test('the checker catches a leaked tensor and a leaked autograd node', () => {
  const be = new CpuBackend();
  const run = (leak: (i: number) => void): Sample[] => {
    const out: Sample[] = [];
    for (let i = 0; i < 20; i++) {
      tidy(() => { full(be, [4], 'f32', 1); });
      leak(i);
      out.push(sample(be));
    }
    return out;
  };
  assert.equal(firstChange(run(() => {}), 10), null);
  const tensor = firstChange(run((i) => { if (i === 15) full(be, [1], 'f32', 0); }), 10);
  assert.equal(tensor?.step, 15);
  assert.deepEqual([tensor!.now.tensors - tensor!.was.tensors, tensor!.now.bytes - tensor!.was.bytes], [1, 4]);
  // A node recorded outside any scope and never back-propagated stays unreleased.
  const leaf = keep(full(be, [2], 'f32', 1));
  leaf.requiresGrad = true;
  const node = firstChange(run((i) => { if (i === 12) beginNode('planted', [leaf], 1); }), 10);
  assert.equal(node?.step, 12);
  assert.equal(node!.now.nodes - node!.was.nodes, 1);
});

test('1,000 steps of the tiny model: live tensors, autograd nodes and live bytes flat after step 10', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-leak-'));
  try {
    const be = new CpuBackend();
    const cfg = mergeTrainConfig(defaultTrainConfig(), {
      steps: 1000, seq_len: 8, micro_batch_size: 1, global_batch_size: 2, schedule: { warmup_steps: 5 }, run_dir: dir,
    }, 'leak test');
    const model = tinyConfig();
    const data = fixedBatches(model.vocab_size, cfg.micro_batch_size, cfg.seq_len);
    const training = new Training(cfg, model, be);
    training.model.initialize(1);
    const samples: Sample[] = [sample(be)];
    const t0 = performance.now();
    for (let s = 0; s < cfg.steps; s++) {
      const m = training.step(s, data);
      assert.ok(Number.isFinite(m.crossEntropy));
      if ((s + 1) % 250 === 0) saveCheckpoint(path.join(dir, 'checkpoints'), s + 1, training.model, training.optimizer, { keep: 1, config: cfg });
      samples.push(sample(be));
    }
    const seconds = (performance.now() - t0) / 1000;
    const change = firstChange(samples, 10);
    assert.equal(change, null, change ? `after step ${change.step}: ${JSON.stringify(change.now)}, at step 10: ${JSON.stringify(change.was)}` : '');
    const s10 = samples[10]!, s0 = samples[0]!;
    console.log(`leak test: ${cfg.steps} steps in ${seconds.toFixed(1)} s; from step 10 to step ${cfg.steps}: ${s10.tensors} live tensors, ${s10.nodes - s0.nodes} autograd nodes between steps, ${s10.bytes} live bytes (before step 1: ${s0.tensors} tensors, ${s0.bytes} bytes)`);
    training.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
