// One rank of pp2·dp2·cp1·ep2 in one process (parallel/simulated_rank.ts) with the tiny model
// on the CPU: the rank's real training step runs through the loopback communicator without
// blocking, the last stage's rank gives finite losses, every rank finite gradient norms, and
// the collectives it counted are the ones its code path makes. Also the predicted-step
// arithmetic (parallel/step_prediction.ts) on a hand-computed example, and the CLI smoke test.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { tinyConfig } from '../src/models/tiny_config.js';
import { heaviestRank, simulatedRank } from '../src/parallel/simulated_rank.js';
import { predictStep } from '../src/parallel/step_prediction.js';
import { defaultTrainConfig, mergeTrainConfig } from '../src/train/config.js';
import { Training, type BatchSource } from '../src/train/trainer.js';
import { Rng } from '../src/nn/rng.js';
import { packageRoot } from '../src/package_root.js';
import { loadDeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { estimateMemory } from '../src/parallel/memory_estimate.js';
import { parseLayout } from '../bench/simulate.js';

const sizes = { pp: 2, dp: 2, cp: 1, ep: 2 };
const S = 16, G = 12;

function model() {
  const c = tinyConfig();
  c.num_hidden_layers = 4; // two stages of two layers (the tiny config has 2)
  return c;
}

async function runRank(rank: number, kind: '1f1b' | 'dualpipev') {
  const c = model(), be = new CpuBackend();
  const cfg = mergeTrainConfig(defaultTrainConfig(), {
    steps: 2, seq_len: S, micro_batch_size: 1, global_batch_size: G, checkpoint_every: 0, precision: 'f32',
    schedule: { type: 'constant', warmup_steps: 0 }, parallel: { ...sizes, schedule: kind },
  }, 'test');
  const dist = await simulatedRank(sizes, rank, { numLayers: 4, nRoutedExperts: c.n_routed_experts, globalBatch: G, microBatch: 1, seqLen: S, schedule: kind });
  const training = new Training(cfg, c, be, dist);
  for (const m of training.models) m.initialize(cfg.seed);
  const rng = new Rng(7);
  const data: BatchSource = {
    vocabSize: c.vocab_size,
    batch: () => {
      const inputs = new Int32Array(S), labels = new Int32Array(S);
      for (let i = 0; i < S; i++) { inputs[i] = rng.below(c.vocab_size); labels[i] = rng.below(c.vocab_size); }
      return { inputs, labels };
    },
  };
  const rows = [0, 1].map((step) => training.step(step, data));
  const stats = dist.comm.stats.byKind();
  training.dispose();
  await dist.close();
  return { rows, stats };
}

for (const kind of ['1f1b', 'dualpipev'] as const) {
  test(`tiny model, pp2·dp2·ep2 ${kind}: the last stage's rank and the first stage's rank each run 2 steps with finite numbers`, async () => {
    // World rank 4 is pipeline rank 1 (1F1B: the last stage); rank 0 holds stage 0 (DualPipeV: and the last).
    const last = await runRank(kind === '1f1b' ? 4 : 0, kind);
    for (const r of last.rows) {
      assert.ok(Number.isFinite(r.crossEntropy) && r.crossEntropy > 0, `cross-entropy ${r.crossEntropy}`);
      assert.ok(Number.isFinite(r.gradientNorm) && r.gradientNorm > 0, `gradient norm ${r.gradientNorm}`);
    }
    const first = await runRank(kind === '1f1b' ? 0 : 4, kind);
    for (const r of first.rows) assert.ok(Number.isFinite(r.gradientNorm) && r.gradientNorm > 0, `gradient norm ${r.gradientNorm}`);
    if (kind === '1f1b') assert.equal(first.rows[0]!.crossEntropy, 0); // the loss is on the other stage's rank
    for (const { stats } of [last, first]) {
      // Sharded weights are gathered and gradients reduce-scattered, tokens travel to their experts,
      // activations between stages, and the step's norm and metrics are all-reduced (3 per step).
      assert.ok(stats['all-gather'].calls > 0 && stats['reduce-scatter'].calls > 0 && stats['all-to-all'].calls > 0 && stats.p2p.calls > 0);
      assert.equal(stats['all-reduce'].calls, 6);
    }
  });
}

test('the costliest stage\'s rank: 1F1B puts the head on pp rank 1; under DualPipeV rank 0 holds the embedding and the head', () => {
  const c = model();
  assert.equal(heaviestRank(c, sizes, '1f1b', S), 4);
  assert.equal(heaviestRank(c, sizes, 'dualpipev', S), 0);
});

test('the lead\'s default run: full DeepSeek-V2-Lite at pp2·dp2·ep2, rank 0 (stage 0, the costliest), fits an 80 GB GPU by the estimator', () => {
  const c = loadDeepseekV2Config(path.join(packageRoot(), 'configs', 'deepseek-v2-lite.json'));
  assert.equal(heaviestRank(c, sizes, '1f1b', 2048), 0);
  // The reference's batch: 1024 sequences of 2048 in micro-batches of 1, 256 per replica.
  const [stage0, stage1] = estimateMemory({ model: c, mesh: sizes, seqLen: 2048, microBatchSize: 1, microBatches: 256, precision: 'bf16', device: 'cuda' });
  assert.ok(stage0!.peakBytes < 60 * 2 ** 30 && stage1!.peakBytes < stage0!.peakBytes, `${stage0!.peakBytes / 2 ** 30} GiB`);
});

test('--layout: sizes named in any order and separator, 1 for the rest; a bad word is one line with the fix', () => {
  assert.deepEqual(parseLayout('pp2,dp2,ep2'), { pp: 2, dp: 2, cp: 1, ep: 2 });
  assert.deepEqual(parseLayout('ep8'), { pp: 1, dp: 1, cp: 1, ep: 8 });
  assert.deepEqual(parseLayout('pp2·dp2·cp1·ep2'), { pp: 2, dp: 2, cp: 1, ep: 2 });
  assert.throws(() => parseLayout('pp2,pp4'), /"pp4" is not one of pp<N>, dp<N>, cp<N>, ep<N> \(each at most once, N ≥ 1\); write e\.g\. --layout pp2,dp2,cp1,ep2/);
});

test('a rank outside the mesh is one line naming the range', async () => {
  await assert.rejects(simulatedRank(sizes, 8, { numLayers: 4, nRoutedExperts: 8, globalBatch: 8, microBatch: 1 }), /--rank 8 is not a rank of the mesh pp2·dp2·cp1·ep2 \(world 8\); choose 0 … 7/);
});

test('predicted step: compute spread over the slots with the bubble, the gathers hidden behind it, every other collective at the assumed link', () => {
  // 8 micro-batches, 4 s of compute: 0.5 s each; 1F1B at pp 2 idles 1/9 → 9 slots → 4.5 s.
  // Communication at 100 GB/s and 10 µs a call: all-gather 200 GB → 2 s + 1000·10 µs = 2.01 s
  // (hidden: shorter than 4.5 s); all-to-all 50 GB → 0.5 s + 2000·10 µs = 0.52 s; p2p 1 GB →
  // 0.01 s + 0; nothing else → 0.53 s exposed.
  const none = { calls: 0, busBytes: 0 };
  const p = predictStep({
    computeSec: 4, microBatches: 8, bubble: 1 / 9, tokensPerStep: 1_000_000,
    comm: { 'all-gather': { calls: 1000, busBytes: 200e9 }, 'reduce-scatter': none, 'all-to-all': { calls: 2000, busBytes: 50e9 }, p2p: { calls: 0, busBytes: 1e9 }, 'all-reduce': none },
    link: { busBytesPerSec: 100e9, latencySec: 10e-6 },
  });
  const close = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-9, `${a} vs ${b}`);
  close(p.computePerMicroSec, 0.5);
  close(p.slots, 9);
  close(p.computeWithBubbleSec, 4.5);
  close(p.commSec['all-gather'], 2.01);
  close(p.commSec['all-to-all'], 0.52);
  close(p.commSec.p2p, 0.01);
  close(p.exposedCommSec, 0.53);
  close(p.stepSec, 5.03);
  close(p.tokensPerSec, 1_000_000 / 5.03);
  close(p.hiddenStepSec, 4.5);
  // Gathers that outlast compute: 1 s of compute, no bubble → the 1.01 s they exceed it is exposed.
  const q = predictStep({
    computeSec: 1, microBatches: 8, bubble: 0, tokensPerStep: 1_000_000,
    comm: { 'all-gather': { calls: 1000, busBytes: 200e9 }, 'reduce-scatter': none, 'all-to-all': { calls: 2000, busBytes: 50e9 }, p2p: { calls: 0, busBytes: 1e9 }, 'all-reduce': none },
    link: { busBytesPerSec: 100e9, latencySec: 10e-6 },
  });
  close(q.exposedCommSec, 1.54);
  close(q.stepSec, 2.54);
  close(q.hiddenStepSec, 2.54);
  // Reduce-scatters hide as the gathers do: 100 GB more → 1.0 s + 500·10 µs on the overlapped side.
  const r = predictStep({
    computeSec: 4, microBatches: 8, bubble: 1 / 9, tokensPerStep: 1_000_000,
    comm: { 'all-gather': { calls: 1000, busBytes: 200e9 }, 'reduce-scatter': { calls: 500, busBytes: 100e9 }, 'all-to-all': { calls: 2000, busBytes: 50e9 }, p2p: { calls: 0, busBytes: 1e9 }, 'all-reduce': none },
    link: { busBytesPerSec: 100e9, latencySec: 10e-6 },
  });
  close(r.commSec['reduce-scatter'], 1.005);
  close(r.exposedCommSec, 0.53); // 3.015 s of gathers and reductions hide behind 4.5 s of compute
  close(r.stepSec, 5.03);
});

test('moetrain bench simulate --model tiny --device cpu runs and prints the split and the prediction', () => {
  const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
  const r = spawnSync(process.execPath, [cli, 'bench', 'simulate', '--model', 'tiny', '--device', 'cpu', '--steps', '2'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.split('\n').filter((l) => l.includes('| INFO | step')).length, 2);
  assert.match(r.stdout, /rank 4 of pp2·dp2·cp1·ep2/);
  assert.match(r.stdout, /= compute [\d.]+ s \+ loopback copies [\d.]+ s/);
  for (const k of ['all-gather', 'reduce-scatter', 'all-to-all', 'p2p', 'all-reduce']) assert.match(r.stdout, new RegExp(`\\n  ${k} +\\d+ calls`));
  assert.match(r.stdout, /pipeline bubble of 1f1b at pp 2, 4 micro-batches: 20\.00%/);
  assert.match(r.stdout, /published NVIDIA figure, not measured here/);
  assert.match(r.stdout, /reference \(8 H100s\): 85,021 tokens\/s at 57\.2 GiB; target ≥ 110,000 tokens\/s at ≤ 57 GiB/);
  const bad = spawnSync(process.execPath, [cli, 'bench', 'simulate', '--model', 'tiny', '--device', 'cpu', '--layout', 'pp2,tp2'], { encoding: 'utf8' });
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /--layout "pp2,tp2": "tp2" is not one of pp<N>, dp<N>, cp<N>, ep<N>/);
});
