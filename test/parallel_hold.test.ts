// parallel.hold_weights and parallel.hold_grads (parallel/fsdp.ts's header): fewer collectives,
// the same training.
//
// Counting: one rank of a layout in this process (parallel/simulated_rank.ts; every collective a
// loopback copy, counted per kind) under dp2, ep2, pp2·dp2·ep2 (1F1B, both pipeline ranks) and
// pp2·dp2·ep2 DualPipeV (two parts on the rank), with 2 or 3 micro-batches per replica: held
// weights make one all-gather per sharded flat per step, held gradients one reduce-scatter, each
// of the flat's whole bytes; nothing stays gathered or whole past the step; a group of one (the
// expert flats under ep2, a world of one) gathers and reduces nothing with or without them. A
// step that throws between micro-batches leaves nothing held and no partial gradient behind.
//
// Equivalence: launched CPU ranks (`moetrain launch`, test/helpers/launched_layout.ts) of the
// tiny model in f32, 3 steps, at dp2 (2 micro-batches per replica) and pp2·dp2·ep2 (1F1B, 2 per
// replica), each flag set against the same layout without flags. hold_weights gathers the same
// bytes once instead of again, so it is bit-identical. hold_grads adds the micro-batches' full
// gradients before the reduce-scatter instead of after it: only the order of f32 additions
// changes, so test/parallel_train.test.ts's bounds apply (losses and norms within 1e-5 relative;
// per tensor ‖Δ‖/‖w‖ < 1e-5, 2e-5 under pp as in test/parallel_pipeline_train.test.ts; every
// element within 1e-2·lr); each test reports what it saw.
//
// Memory: the estimator's held parts are exactly the sharded units' bytes, counted here from the
// parameter shapes, and the flags move the peak by exactly them less the transient parts they
// replace; the CLIs take the flags.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { toHostF32 } from '../src/ops/create.js';
import { bytesPerElement } from '../src/tensor/dtype.js';
import { loadDeepseekV2Config, type DeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { parameterShapes } from '../src/models/deepseek_v2_names.js';
import { ownedExperts } from '../src/parallel/expert_dispatch.js';
import { planShards } from '../src/parallel/fsdp_plan.js';
import { estimateMemory } from '../src/parallel/memory_estimate.js';
import { pipelineParts } from '../src/parallel/pipeline.js';
import { simulatedRank } from '../src/parallel/simulated_rank.js';
import { splitStages } from '../src/parallel/stages.js';
import { packageRoot } from '../src/package_root.js';
import { defaultTrainConfig, mergeTrainConfig } from '../src/train/config.js';
import { Training, type BatchSource } from '../src/train/trainer.js';
import { syntheticBatches } from './helpers/synthetic_batches.js';
import { assertEquivalent, launchedLayout, type LayoutResult } from './helpers/launched_layout.js';
import { layoutConfig, type TrainLayout } from './helpers/parallel_train_rank.js';
import { SIM_SEQ_LEN, simulatedTraining, tinyWithLayers, type SimCase } from './helpers/simulated_training.js';

const made: string[] = [];
after(() => { for (const d of made) fs.rmSync(d, { recursive: true, force: true }); });
const tmp = (): string => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-hold-'));
  made.push(d);
  return d;
};

type Hold = { weights: boolean; grads: boolean };
const HOLDS: [string, Hold][] = [
  ['none', { weights: false, grads: false }],
  ['hold_weights', { weights: true, grads: false }],
  ['hold_grads', { weights: false, grads: true }],
  ['both', { weights: true, grads: true }],
];

const S = SIM_SEQ_LEN;
const tinyWith = tinyWithLayers;

/** One simulated rank, 2 steps; the loopback's counts of the second step and its metrics. */
async function simulate(c: SimCase, hold: Hold, data?: (model: DeepseekV2Config) => BatchSource) {
  const { model, metrics, stats, training, dist } = await simulatedTraining(c, { parallel: { hold_weights: hold.weights, hold_grads: hold.grads } }, data);
  // Sharded flats of the rank's parts, as the trainer plans them.
  const { pp, dp, ep } = c.sizes;
  const coords = dist.mesh.coords;
  const experts = ownedExperts(coords.ep, ep, model.n_routed_experts);
  const parts = pp > 1 ? pipelineParts(model, c.kind, pp, coords.pp, S, experts).map((p) => p.part) : [{ layers: [0, c.layers] as [number, number], experts, embed: true, head: true }];
  const groups = { dense: dist.groups.denseShard.size, expert: dist.groups.expertShard.size };
  const planned = parts.flatMap((part) => planShards(model, part, 'bf16', groups).flatMap((u) => u.flats));
  const flats = planned.filter((f) => groups[f.group] > 1);
  // A group of one's flats are the shards themselves: their parameters are always resident.
  const wholeParams = planned.filter((f) => groups[f.group] === 1).reduce((n, f) => n + f.members.length, 0);
  const resident = training.models.flatMap((m) => m.params.map((p) => p.value.storage.resident || p.grad.storage.resident));
  const result = {
    metrics, stats, flats, m: c.globalBatch / (dp * ep), training,
    gathered: flats.reduce((n, f) => n + f.padded * bytesPerElement(f.dtype), 0),
    fullGrads: flats.reduce((n, f) => n + f.padded * 4, 0),
    residentAfterStep: resident.filter((r) => r).length - wholeParams,
    heldOverStep: training.shardBytes()!.heldOverStep,
  };
  const params = new Map(training.checkpointEntries().map((e) => [e.name, toHostF32(e.tensor)]));
  training.dispose();
  await dist.close();
  return { ...result, params };
}

describe('collectives per step with held weights and gradients (one simulated rank, loopback counts)', () => {
  const cases: SimCase[] = [
    { name: 'dp2, 2 micro-batches per replica', sizes: { pp: 1, dp: 2, cp: 1, ep: 1 }, rank: 0, kind: '1f1b', layers: 2, globalBatch: 4 },
    { name: 'ep2 (expert flats over a group of one), 2 micro-batches per replica', sizes: { pp: 1, dp: 1, cp: 1, ep: 2 }, rank: 1, kind: '1f1b', layers: 2, globalBatch: 4 },
    { name: 'pp2·dp2·ep2 1f1b, first stage, 2 micro-batches per replica', sizes: { pp: 2, dp: 2, cp: 1, ep: 2 }, rank: 0, kind: '1f1b', layers: 4, globalBatch: 8 },
    { name: 'pp2·dp2·ep2 1f1b, last stage, 2 micro-batches per replica', sizes: { pp: 2, dp: 2, cp: 1, ep: 2 }, rank: 4, kind: '1f1b', layers: 4, globalBatch: 8 },
    { name: 'pp2·dp2·ep2 dualpipev (two parts), 3 micro-batches per replica', sizes: { pp: 2, dp: 2, cp: 1, ep: 2 }, rank: 0, kind: 'dualpipev', layers: 4, globalBatch: 12 },
  ];
  for (const c of cases) {
    test(c.name, async (t) => {
      const runs = new Map<string, Awaited<ReturnType<typeof simulate>>>();
      for (const [name, hold] of HOLDS) runs.set(name, await simulate(c, hold));
      const none = runs.get('none')!;
      const N = none.flats.length, m = none.m;
      assert.ok(N > 0 && m >= 2);
      const calls = (name: string) => [runs.get(name)!.stats['all-gather'].calls, runs.get(name)!.stats['reduce-scatter'].calls];
      t.diagnostic(`${N} sharded flats, ${m} micro-batches: all-gather/reduce-scatter calls per step ${HOLDS.map(([n]) => `${n} ${calls(n).join('/')}`).join(', ')}`);
      // Without: every micro-batch reduces every flat once and gathers each more than once.
      assert.equal(none.stats['reduce-scatter'].calls, m * N);
      assert.ok(none.stats['all-gather'].calls > m * N);
      for (const [name, hold] of HOLDS) {
        const r = runs.get(name)!;
        const ag = r.stats['all-gather'], rs = r.stats['reduce-scatter'];
        if (hold.weights) {
          assert.equal(ag.calls, N, `${name}: one all-gather per sharded flat per step`);
          assert.equal(ag.payloadBytes, r.gathered, `${name}: each flat's whole compute bytes gathered once`);
        } else {
          assert.equal(ag.calls, none.stats['all-gather'].calls, `${name}: the gathers of the run without flags`);
        }
        if (hold.grads) {
          assert.equal(rs.calls, N, `${name}: one reduce-scatter per sharded flat per step`);
          assert.equal(rs.payloadBytes, r.fullGrads, `${name}: each flat's whole f32 gradient reduced once`);
        } else {
          assert.equal(rs.calls, m * N, `${name}: a reduce-scatter per flat per micro-batch`);
        }
        assert.equal(r.heldOverStep, (hold.weights ? r.gathered : 0) + (hold.grads ? r.fullGrads : 0), `${name}: the start-up line's held bytes`);
        assert.equal(r.residentAfterStep, 0, `${name}: no weights gathered and no full gradient whole after the step`);
        assert.equal(r.metrics[1]!.liveMemoryBytes, none.metrics[1]!.liveMemoryBytes, `${name}: nothing held past the step`);
        for (const [s, row] of r.metrics.entries()) {
          assert.ok(Number.isFinite(row.gradientNorm) && row.gradientNorm > 0, `${name} step ${s + 1}: gradient norm ${row.gradientNorm}`);
          // Held weights are the bytes a fresh gather would give: the same step, bit for bit.
          if (!hold.grads) assert.deepEqual([row.crossEntropy, row.loadBalance, row.gradientNorm], [none.metrics[s]!.crossEntropy, none.metrics[s]!.loadBalance, none.metrics[s]!.gradientNorm], `${name} step ${s + 1}`);
          else assert.ok(Math.abs(row.gradientNorm - none.metrics[s]!.gradientNorm) <= 1e-5 * none.metrics[s]!.gradientNorm, `${name} step ${s + 1}: norm ${row.gradientNorm} vs ${none.metrics[s]!.gradientNorm}`);
        }
      }
      const both = runs.get('both')!;
      t.diagnostic(`peak ${none.metrics[1]!.peakMemoryBytes} bytes without, ${both.metrics[1]!.peakMemoryBytes} holding both`);
      assert.ok(both.metrics[1]!.peakMemoryBytes > none.metrics[1]!.peakMemoryBytes, 'holding costs memory at the peak');
    });
  }

  test('a world of one (every flat whole): the flags change nothing, bit for bit, and nothing is gathered or reduced', async () => {
    const c: SimCase = { name: 'one', sizes: { pp: 1, dp: 1, cp: 1, ep: 1 }, rank: 0, kind: '1f1b', layers: 2, globalBatch: 2 };
    const none = await simulate(c, HOLDS[0]![1]), both = await simulate(c, HOLDS[3]![1]);
    assert.equal(none.flats.length, 0);
    for (const r of [none, both]) assert.deepEqual([r.stats['all-gather'].calls, r.stats['reduce-scatter'].calls], [0, 0]);
    assert.deepEqual(both.metrics.map((r) => [r.crossEntropy, r.loadBalance, r.gradientNorm, r.peakMemoryBytes]), none.metrics.map((r) => [r.crossEntropy, r.loadBalance, r.gradientNorm, r.peakMemoryBytes]));
    for (const [k, v] of none.params) assert.deepEqual(both.params.get(k), v, k);
  });

  test('a step that throws between micro-batches releases the held weights and drops the unreduced gradients', async () => {
    const c: SimCase = { name: 'dp2', sizes: { pp: 1, dp: 2, cp: 1, ep: 1 }, rank: 0, kind: '1f1b', layers: 2, globalBatch: 4 };
    const model = tinyWith(2), be = new CpuBackend();
    const cfg = mergeTrainConfig(defaultTrainConfig(), {
      device: 'cpu', steps: 2, seq_len: S, micro_batch_size: 1, global_batch_size: 4, checkpoint_every: 0, precision: 'bf16',
      schedule: { type: 'constant', warmup_steps: 0 }, parallel: { ...c.sizes, hold_weights: true, hold_grads: true },
    }, 'hold test');
    const make = async () => {
      const dist = await simulatedRank(c.sizes, 0, { numLayers: 2, nRoutedExperts: model.n_routed_experts, globalBatch: 4, microBatch: 1, seqLen: S });
      const training = new Training(cfg, model, be, dist);
      training.model.initialize(cfg.seed);
      return { dist, training };
    };
    const good = syntheticBatches({ vocab: model.vocab_size, seqLen: S, microBatch: 1 });
    // The second micro-batch of this replica cannot be read: after the first one's backward.
    const failing: BatchSource = { vocabSize: model.vocab_size, batch: (step, micro) => { if (micro === 1) throw new Error('unreadable batch'); return good.batch(step, micro); } };
    const a = await make();
    assert.throws(() => a.training.step(0, failing), /unreadable batch/);
    const held = a.training.model.params.filter((p) => p.value.storage.resident || p.grad.storage.resident).map((p) => p.shape.join('×'));
    assert.deepEqual(held, [], 'nothing gathered or whole after the throw');
    const retried = a.training.step(0, good);
    const b = await make();
    const fresh = b.training.step(0, good);
    assert.deepEqual([retried.crossEntropy, retried.gradientNorm], [fresh.crossEntropy, fresh.gradientNorm], 'the retried step starts from zeroed gradients');
    for (const x of [a, b]) { x.training.dispose(); await x.dist.close(); }
  });
});

describe('held weights and gradients train as without them (launched CPU ranks, 3 steps, tiny model, f32)', () => {
  const f32 = (over: Partial<TrainLayout>): TrainLayout => ({ dp: 1, ep: 1, precision: 'f32', form: 'sequence', microBatch: 2, globalBatch: 8, steps: 3, ...over });
  const layouts: [string, TrainLayout, number][] = [
    ['dp2, 2 micro-batches per replica', f32({ dp: 2 }), 1e-5],
    ['pp2·dp2·ep2, 1f1b, 2 micro-batches per replica', f32({ pp: 2, dp: 2, ep: 2, microBatch: 1, layers: 4 }), 2e-5],
  ];
  for (const [name, layout, relL2Max] of layouts) {
    test(name, (t) => {
      const runs = new Map<string, LayoutResult>();
      for (const [flag, hold] of HOLDS) runs.set(flag, launchedLayout({ ...layout, holdWeights: hold.weights, holdGrads: hold.grads }, tmp()));
      const none = runs.get('none')!;
      const exact = (a: LayoutResult, b: LayoutResult, what: string) => {
        assert.deepEqual(b.metrics.map((r) => [r.crossEntropy, r.loadBalance, r.gradientNorm]), a.metrics.map((r) => [r.crossEntropy, r.loadBalance, r.gradientNorm]), `${what}: losses and norms`);
        for (const [k, v] of a.params) assert.deepEqual(b.params.get(k), v, `${what}: ${k}`);
      };
      exact(none, runs.get('hold_weights')!, 'hold_weights against none');
      exact(runs.get('hold_grads')!, runs.get('both')!, 'both against hold_grads');
      for (const flag of ['hold_grads', 'both']) {
        assertEquivalent(none, runs.get(flag)!, layoutConfig(layout).optimizer.lr, (l) => t.diagnostic(`${flag}: ${l}`), relL2Max);
      }
    });
  }
});

describe('memory: the held parts', () => {
  const lite = () => loadDeepseekV2Config(path.join(packageRoot(), 'configs', 'deepseek-v2-lite.json'));
  const mesh = { pp: 2, dp: 2, cp: 1, ep: 2 };
  const estimate = (hold: Hold, m = mesh) => estimateMemory({ model: lite(), mesh: m, seqLen: 2048, microBatchSize: 1, microBatches: 256, precision: 'bf16', device: 'cuda', holdWeights: hold.weights, holdGrads: hold.grads });

  test('DeepSeek-V2-Lite at pp2·dp2·ep2: the flags add exactly every sharded unit of the stage, less the transient layers they replace', () => {
    const c = lite();
    const stages = splitStages(c, 2, 2048);
    const [none, w, g, both] = HOLDS.map(([, h]) => estimate(h));
    for (const [s, st] of stages.entries()) {
      // Every unit is sharded here (dense over 4 ranks, experts over 2): the stage's dense
      // parameters and this rank's 32 of 64 experts, whole; the router in f32, the rest bf16.
      const part = { layers: [st.first, st.end] as [number, number], experts: [0, c.n_routed_experts / 2] as [number, number], embed: s === 0, head: s === 1 };
      let elements = 0, weightBytes = 0;
      for (const p of parameterShapes(c, part)) {
        const n = p.shape.reduce((a, b) => a * b, 1);
        elements += n;
        weightBytes += n * (/\.mlp\.gate\.weight$/.test(p.name) ? 4 : 2);
      }
      const a = none![s]!, bw = w![s]!, bg = g![s]!, bb = both![s]!;
      assert.equal(bw.parts.heldWeights, weightBytes, `stage ${s}: held weights`);
      assert.equal(bg.parts.heldGradients, 4 * elements, `stage ${s}: held gradients`);
      assert.deepEqual([bw.parts.gatheredWeights, bg.parts.layerGradients], [0, 0], 'the transient parts are inside the held ones');
      assert.equal(bw.peakBytes - a.peakBytes, weightBytes - a.parts.gatheredWeights);
      assert.equal(bg.peakBytes - a.peakBytes, 4 * elements - a.parts.layerGradients);
      assert.equal(bb.peakBytes - a.peakBytes, weightBytes - a.parts.gatheredWeights + 4 * elements - a.parts.layerGradients);
      for (const r of [bw, bg, bb]) assert.equal(r.persistentBytes, a.persistentBytes, 'nothing held between steps');
    }
  });

  test('one rank holds everything whole: the flags add nothing', () => {
    const one = { pp: 1, dp: 1, cp: 1, ep: 1 };
    const c = lite();
    c.num_hidden_layers = 2;
    const est = (hold: Hold) => estimateMemory({ model: c, mesh: one, seqLen: 256, microBatchSize: 1, microBatches: 4, precision: 'bf16', device: 'cpu', holdWeights: hold.weights, holdGrads: hold.grads });
    assert.deepEqual(est(HOLDS[3]![1]), est(HOLDS[0]![1]));
  });

  test('the command lines take the flags: estimate-memory prints the held parts; bench simulate gathers and reduces once per flat', () => {
    const cli = path.join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
    const model = path.join(packageRoot(), 'configs', 'deepseek-v2-lite.json');
    const est = spawnSync(process.execPath, [cli, 'estimate-memory', '--model', model, '--parallel.pp', '2', '--parallel.dp', '2', '--parallel.ep', '2',
      '--parallel.hold-weights', '--parallel.hold_grads'], { encoding: 'utf8' });
    assert.equal(est.status, 0, est.stderr);
    assert.match(est.stdout, /holding gathered weights, holding full gradients/);
    assert.match(est.stdout, /held-weights {2}held-grads/);
    assert.match(est.stdout, /^ {4}0 {2}0-14 .* \| {5}0\.00 {9}0\.00 {10}8\.58 {7}17\.15 /m);
    const sim = (flags: string[]) => {
      const r = spawnSync(process.execPath, [cli, 'bench', 'simulate', '--model', 'tiny', '--device', 'cpu', '--steps', '2', ...flags], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const calls = (k: string) => Number(new RegExp(`\\n  ${k} +(\\d+) calls`).exec(r.stdout)![1]);
      return { out: r.stdout, ag: calls('all-gather'), rs: calls('reduce-scatter') };
    };
    const plain = sim([]), held = sim(['--parallel.hold_weights', '--parallel.hold_grads']);
    assert.match(held.out, /4 micro-batches per replica; gathered weights held over the step; full gradients held over the step;/);
    // Rank 4 holds stage 1: one call per sharded flat; without, a reduce-scatter per flat per micro-batch.
    assert.equal(held.ag, held.rs);
    assert.equal(plain.rs, 4 * held.rs);
    assert.ok(plain.ag > 4 * held.ag, `all-gathers ${plain.ag} without, ${held.ag} with`);
  });
});
