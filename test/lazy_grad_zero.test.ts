// Lazily zeroed gradients (autograd/lazy_grad_zero.ts) on the CPU backend:
// - every op that writes a parameter's gradient (linear in f32, bf16 and into a lean bf16
//   gradient; linearCrossEntropyMean over three row chunks; groupedLinear with an expert without
//   rows, f32 and bf16 gradients, and a mix of marked and written experts; rmsNorm; embedding;
//   accumulateLeafGrad through an elementwise op): a gradient filled with NaN and marked
//   logically zero holds exactly the fresh gradient after one backward (the fresh one is the
//   same backward into a gradient of zeros that is not marked), a second backward adds to it, and
//   an unmarked gradient accumulates (within one rounding per add);
// - the backend pieces: groupedLinearWeightGrad with beta 0 over NaN (an expert without rows
//   gets zeros; no rows at all: zeros, while beta 1 leaves them), adamMulti / adamLeanMulti /
//   Adam.update with 'keep' (the same weights and moments bit for bit as 'zero', gradients unread
//   after the step and left as they were);
// - the trainer: a few steps of the tiny model, default and lean recipes, one and three
//   micro-batches, give bit for bit the losses, gradient norms and weights of eager zeroing. The
//   lazy run's backend fills every gradient the optimizer keeps with NaN (so a writer that adds
//   to a marked gradient, or a norm that reads one no op wrote, turns the run to NaN); the eager
//   run's backend zeroes every gradient in the optimizer pass whatever the trainer asks, and the
//   marks are cleared before every step (settleGrad of zeros), so every write accumulates (beta 1)
//   onto zeros as before lazy zeroing existed: a writer that ignores a mark, or clears it without
//   writing, makes the two runs differ;
// - parameters unused in a step have gradient exactly zero at the norm: routed experts that
//   receive no tokens (the grouped product's beta 0 writes their zeros) and routed experts whose
//   layer runs no expert at all (the trainer zero-fills them before the norm), through a test
//   ExpertDispatchHook.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { AdamHyper, GradsAfter, LeanAdamHyper } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { TensorList, type AdamSlot, type LeanAdamSlot } from '../src/backend/tensor_list.js';
import { backward } from '../src/autograd/backward.js';
import { isGradZeroPending, markGradZero, settleGrad } from '../src/autograd/lazy_grad_zero.js';
import type { ExpertDispatchHook, LocalExperts } from '../src/models/expert_dispatch_hook.js';
import { namedParameters } from '../src/models/deepseek_v2_names.js';
import { tinyConfig } from '../src/models/tiny_config.js';
import { Param } from '../src/nn/param.js';
import { Rng } from '../src/nn/rng.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { mul, scale } from '../src/ops/elementwise.js';
import { embedding } from '../src/ops/embedding.js';
import { groupedLinear } from '../src/ops/grouped_linear.js';
import { linear } from '../src/ops/linear.js';
import { linearCrossEntropyMean } from '../src/ops/linear_cross_entropy.js';
import { rmsNorm } from '../src/ops/rms_norm.js';
import { Adam } from '../src/optim/adam.js';
import { tidy } from '../src/tensor/scope.js';
import type { DType } from '../src/tensor/dtype.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { defaultTrainConfig, mergeTrainConfig } from '../src/train/config.js';
import { Training } from '../src/train/trainer.js';
import { fixedBatches } from './helpers/fixed_batches.js';

const cpu = new CpuBackend();

function normals(seed: number, n: number, s = 1): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => s * rng.normal());
}

function bitsEqual(got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, what);
  const a = new Uint32Array(got.buffer, got.byteOffset, got.length), b = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) assert.fail(`${what}: element ${i} is ${got[i]}, expected ${want[i]}`);
}

/** got ≈ want element by element, within `rel` of the terms' magnitude (one rounding per add). */
function closeTo(got: Float32Array, want: Float32Array, scaleOf: Float32Array, rel: number, what: string): void {
  assert.equal(got.length, want.length, what);
  for (let i = 0; i < got.length; i++) {
    const tol = rel * scaleOf[i]! + 1e-30;
    if (!(Math.abs(got[i]! - want[i]!) <= tol)) assert.fail(`${what}: element ${i} is ${got[i]}, expected ${want[i]} (±${tol})`);
  }
}

// ---- op level: one case per gradient writer ----

/** How the gradients start before a backward: zeros (not marked), NaN marked logically zero, or given values. */
type Start = 'zeros' | 'marked' | Float32Array[];

/** A writer: its parameters' shapes and dtypes, and a forward from their leaves to a tensor to back-propagate from. */
interface WriterCase {
  name: string;
  params: { shape: number[]; compute: DType; grad: DType }[];
  forward(ws: readonly Tensor[]): Tensor;
}

function makeParam(shape: readonly number[], compute: DType, grad: DType): Param {
  if (grad === 'bf16') return new Param(shape, cpu, compute, { lean: { gradDtype: 'bf16' } });
  return new Param(shape, cpu, compute);
}

/** The parameters' gradients after `passes` backward passes of c from `start`. */
function gradsAfter(c: WriterCase, start: Start, passes = 1): Float32Array[] {
  const ps = c.params.map((s, i) => {
    const p = makeParam(s.shape, s.compute, s.grad);
    p.load(normals(100 + i, p.size, 0.5));
    settleGrad(p.grad); // zeros, not marked
    if (start === 'marked') { cpu.fill(p.grad, Number.NaN); markGradZero(p.grad); }
    else if (start !== 'zeros') cpu.write(p.grad, s.grad === 'bf16' ? fromHostBits(start[i]!) : start[i]!);
    return p;
  });
  for (let k = 0; k < passes; k++) {
    tidy(() => {
      const y = c.forward(ps.map((p) => p.value));
      backward(y, fromHost(cpu, normals(7, y.size), y.shape, y.dtype));
    });
  }
  ps.forEach((p, i) => assert.ok(!isGradZeroPending(p.grad), `${c.name}: parameter ${i}'s gradient is still marked after a backward`));
  const out = ps.map((p) => toHostF32(p.grad));
  for (const p of ps) p.dispose();
  return out;
}

const fromHostBits = (v: Float32Array): Uint16Array => {
  const t = fromHost(cpu, v, [v.length], 'bf16');
  const bits = cpu.read(t) as Uint16Array;
  t.dispose();
  return bits;
};

/** Values exactly representable in `dtype` (an accumulate check starts from them). */
function startValues(c: WriterCase): Float32Array[] {
  return c.params.map((s, i) => {
    const v = normals(200 + i, s.shape.reduce((a, b) => a * b, 1), 0.25);
    if (s.grad !== 'bf16') return v;
    const t = fromHost(cpu, v, [v.length], 'bf16');
    const r = toHostF32(t);
    t.dispose();
    return r;
  });
}

const x = (seed: number, shape: number[], dtype: DType) => fromHost(cpu, normals(seed, shape.reduce((a, b) => a * b, 1)), shape, dtype);
const offsets = (counts: readonly number[], base = 0) => {
  const o = [base];
  for (const n of counts) o.push(o[o.length - 1]! + n);
  return fromHost(cpu, o, [o.length], 'i32');
};
const GROUP_COUNTS = [3, 0, 5, 2];
const grouped = (grad: DType): WriterCase => ({
  name: `groupedLinear, ${grad} gradients`,
  params: GROUP_COUNTS.map(() => ({ shape: [6, 8], compute: 'bf16', grad })),
  forward: (ws) => groupedLinear(x(3, [10, 8], 'bf16'), ws, offsets(GROUP_COUNTS, 4)),
});

const CASES: WriterCase[] = [
  { name: 'linear, bf16 compute, f32 gradient', params: [{ shape: [7, 12], compute: 'bf16', grad: 'f32' }], forward: ([w]) => linear(x(1, [5, 12], 'bf16'), w!) },
  { name: 'linear, f32 compute (the router)', params: [{ shape: [7, 12], compute: 'f32', grad: 'f32' }], forward: ([w]) => linear(x(1, [2, 3, 12], 'f32'), w!) },
  { name: 'linear, lean bf16 gradient', params: [{ shape: [7, 12], compute: 'bf16', grad: 'bf16' }], forward: ([w]) => linear(x(1, [5, 12], 'bf16'), w!) },
  {
    name: 'linearCrossEntropyMean, three row chunks', params: [{ shape: [11, 12], compute: 'bf16', grad: 'f32' }],
    forward: ([w]) => linearCrossEntropyMean(x(2, [5, 12], 'bf16'), w!, fromHost(cpu, [3, -1, 10, 0, 7], [5], 'i32'), 4, 2),
  },
  {
    name: 'linearCrossEntropyMean, logits kept (one chunk)', params: [{ shape: [11, 12], compute: 'bf16', grad: 'f32' }],
    forward: ([w]) => linearCrossEntropyMean(x(2, [5, 12], 'bf16'), w!, fromHost(cpu, [3, -1, 10, 0, 7], [5], 'i32'), 4, undefined, true),
  },
  grouped('f32'),
  grouped('bf16'),
  { name: 'rmsNorm', params: [{ shape: [12], compute: 'bf16', grad: 'f32' }], forward: ([w]) => rmsNorm(x(4, [6, 12], 'bf16'), w!, 1e-6) },
  { name: 'embedding (repeated ids)', params: [{ shape: [10, 6], compute: 'bf16', grad: 'f32' }], forward: ([w]) => embedding(fromHost(cpu, [3, 1, 3, 9, 0, 3, 1], [7], 'i32'), w!) },
  { name: 'accumulateLeafGrad (an elementwise op)', params: [{ shape: [4, 6], compute: 'bf16', grad: 'f32' }], forward: ([w]) => mul(x(5, [3, 4, 6], 'bf16'), w!) },
];

for (const c of CASES) {
  test(`${c.name}: a marked NaN gradient gets exactly the fresh gradient, then accumulates; an unmarked one accumulates`, () => {
    const fresh = gradsAfter(c, 'zeros');
    const bf16 = c.params.some((p) => p.grad === 'bf16');
    fresh.forEach((g, i) => {
      assert.ok(g.every(Number.isFinite), `${c.name}: fresh gradient ${i} is finite`);
      assert.ok(g.some((v) => v !== 0) || (c.name.startsWith('grouped') && GROUP_COUNTS[i] === 0), `${c.name}: fresh gradient ${i} is not all zero`);
    });
    gradsAfter(c, 'marked').forEach((g, i) => bitsEqual(g, fresh[i]!, `${c.name}: marked gradient ${i}`));
    // The mark is cleared by the first write: a second pass adds.
    const rel = bf16 ? 2 ** -7 : 2 ** -20;
    gradsAfter(c, 'marked', 2).forEach((g, i) => {
      const twice = fresh[i]!.map((v) => 2 * v);
      closeTo(g, twice, twice.map(Math.abs), rel, `${c.name}: two passes from a marked gradient ${i}`);
    });
    const init = startValues(c);
    gradsAfter(c, init).forEach((g, i) => {
      const want = init[i]!.map((v, j) => v + fresh[i]![j]!);
      closeTo(g, want, init[i]!.map((v, j) => Math.abs(v) + Math.abs(fresh[i]![j]!)), rel, `${c.name}: unmarked gradient ${i} accumulates`);
      if (c.name.startsWith('grouped') && GROUP_COUNTS[i] === 0) bitsEqual(g, init[i]!, `${c.name}: an expert without rows keeps its unmarked gradient`);
    });
  });
}

test('groupedLinear over a mix of marked and written experts: the marked ones start from zero, the others accumulate', () => {
  const c = grouped('f32');
  const fresh = gradsAfter(c, 'zeros'), init = startValues(c);
  const ps = c.params.map((s, i) => {
    const p = makeParam(s.shape, s.compute, s.grad);
    p.load(normals(100 + i, p.size, 0.5));
    settleGrad(p.grad);
    if (i % 2 === 0) { cpu.fill(p.grad, Number.NaN); markGradZero(p.grad); } else cpu.write(p.grad, init[i]!);
    return p;
  });
  tidy(() => {
    const y = c.forward(ps.map((p) => p.value));
    backward(y, fromHost(cpu, normals(7, y.size), y.shape, y.dtype));
  });
  ps.forEach((p, i) => {
    const g = toHostF32(p.grad);
    if (i % 2 === 0) bitsEqual(g, fresh[i]!, `marked expert ${i}`);
    else if (GROUP_COUNTS[i] === 0) bitsEqual(g, init[i]!, `written expert ${i} without rows`);
    else closeTo(g, init[i]!.map((v, j) => v + fresh[i]![j]!), init[i]!.map((v, j) => Math.abs(v) + Math.abs(fresh[i]![j]!)), 2 ** -20, `written expert ${i}`);
    assert.ok(!isGradZeroPending(p.grad));
    p.dispose();
  });
});

test('a marked gradient no op writes stays marked; settleGrad fills it with zeros once', () => {
  const p = makeParam([3, 4], 'bf16', 'f32');
  assert.ok(isGradZeroPending(p.grad), 'a new whole parameter starts marked');
  cpu.fill(p.grad, Number.NaN);
  // A linear over no rows writes nothing.
  tidy(() => { const y = linear(x(1, [0, 4], 'bf16'), p.value); backward(y, fromHost(cpu, [], y.shape, y.dtype)); });
  assert.ok(isGradZeroPending(p.grad));
  settleGrad(p.grad);
  assert.ok(!isGradZeroPending(p.grad));
  bitsEqual(toHostF32(p.grad), new Float32Array(12), 'settled');
  cpu.fill(p.grad, 5);
  settleGrad(p.grad); // not marked: nothing happens
  assert.ok(toHostF32(p.grad).every((v) => v === 5));
  p.dispose();
});

// ---- backend level ----

test('groupedLinearWeightGrad beta 0 on the CPU: overwrites NaN, an expert without rows gets zeros, no rows at all gives zeros', () => {
  const counts = [0, 4, 1, 0, 6], K = 5, N = 3, M = 11;
  for (const dtype of ['f32', 'bf16'] as const) {
    const dy = x(11, [M, N], 'bf16'), xs = x(12, [M, K], 'bf16'), off = offsets(counts, 9);
    const ref = counts.map(() => fromHost(cpu, new Float32Array(N * K), [N, K], dtype));
    cpu.groupedLinearWeightGrad(ref, dy, xs, off, 1);
    const got = counts.map(() => { const t = fromHost(cpu, new Float32Array(N * K), [N, K], dtype); cpu.fill(t, Number.NaN); return t; });
    cpu.groupedLinearWeightGrad(got, dy, xs, off, 0);
    got.forEach((g, e) => {
      bitsEqual(toHostF32(g), toHostF32(ref[e]!), `${dtype} expert ${e}`);
      if (counts[e] === 0) assert.ok(toHostF32(g).every((v) => v === 0), `${dtype} expert ${e} without rows: zeros`);
    });
    const none = offsets([0, 0], 3), empty = x(1, [0, N], 'bf16'), emptyX = x(1, [0, K], 'bf16');
    const kept = fromHost(cpu, new Float32Array(N * K).fill(2), [N, K], dtype);
    cpu.groupedLinearWeightGrad([kept, kept], empty, emptyX, none, 1);
    assert.ok(toHostF32(kept).every((v) => v === 2), `${dtype}: beta 1 over no rows leaves the gradient`);
    cpu.groupedLinearWeightGrad([kept, kept], empty, emptyX, none, 0);
    assert.ok(toHostF32(kept).every((v) => v === 0), `${dtype}: beta 0 over no rows writes zeros`);
    for (const t of [dy, xs, off, none, empty, emptyX, kept, ...ref, ...got]) t.dispose();
  }
});

const H: AdamHyper = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, decoupled: true, step: 3, gradScale: 0.5 };

test('adamMulti and adamLeanMulti with "keep": the same step bit for bit, the gradients left as they were', () => {
  const sizes = [1, 7, 33];
  for (const gradType of ['f32', 'bf16'] as const) {
    const make = (): { list: TensorList<AdamSlot>; lean: TensorList<LeanAdamSlot>; grads: Tensor[] } => {
      const t = (seed: number, n: number, dt: DType, s: number) => fromHost(cpu, normals(seed, n, s), [n], dt);
      /** Second moments: squares. */
      const sq = (seed: number, n: number, dt: DType) => fromHost(cpu, normals(seed, n, 1e-3).map((v) => v * v), [n], dt);
      const slots = sizes.map((n, i): AdamSlot => ({ param: t(i, n, 'f32', 0.1), grad: t(10 + i, n, gradType, 1e-3), m: t(20 + i, n, 'f32', 1e-4), v: sq(30 + i, n, 'f32'), lowp: t(40, n, 'bf16', 1), decay: i % 2 === 0 }));
      const lean = sizes.map((n, i): LeanAdamSlot => ({ weights: t(50 + i, n, 'bf16', 0.1), grad: t(60 + i, n, gradType, 1e-3), m: t(70 + i, n, 'bf16', 1e-4), v: sq(80 + i, n, 'bf16'), decay: i % 2 === 1 }));
      return { list: new TensorList(slots), lean: new TensorList(lean), grads: [...slots.map((s) => s.grad), ...lean.map((s) => s.grad)] };
    };
    const zero = make(), kept = make();
    const before = kept.grads.map(toHostF32);
    const lh: LeanAdamHyper = { ...H, seed: 5, firstStream: 2 };
    cpu.adamMulti(zero.list, H, 'zero'); cpu.adamMulti(kept.list, H, 'keep');
    cpu.adamLeanMulti(zero.lean, lh, 'zero'); cpu.adamLeanMulti(kept.lean, lh, 'keep');
    zero.list.entries.forEach((s, i) => {
      const k = kept.list.entries[i]!;
      for (const f of ['param', 'm', 'v', 'lowp'] as const) bitsEqual(toHostF32(k[f]!), toHostF32(s[f]!), `${gradType} adamMulti slot ${i} ${f}`);
    });
    zero.lean.entries.forEach((s, i) => {
      const k = kept.lean.entries[i]!;
      for (const f of ['weights', 'm', 'v'] as const) bitsEqual(toHostF32(k[f]), toHostF32(s[f]), `${gradType} adamLeanMulti slot ${i} ${f}`);
    });
    kept.grads.forEach((g, i) => bitsEqual(toHostF32(g), before[i]!, `${gradType} gradient ${i} kept`));
    zero.grads.forEach((g, i) => assert.ok(toHostF32(g).every((v) => v === 0), `${gradType} gradient ${i} zeroed`));
  }
});

test('Adam.update and updateEach with "keep" step the same as with "zero" and leave the gradients', () => {
  const run = (grads: GradsAfter, each: boolean) => {
    const ps = [[4, 3], [5]].map((shape, i) => { const p = new Param(shape, cpu, 'bf16'); p.load(normals(i, p.size, 0.1)); cpu.write(p.grad, normals(9 + i, p.size, 1e-2)); return p; });
    const adam = new Adam(ps, { type: 'adamw', lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }, cpu);
    if (each) adam.updateEach(1e-2, 0.5, grads); else adam.update(1e-2, 0.5, grads);
    const out = ps.map((p) => ({ master: toHostF32(p.master), value: toHostF32(p.value), grad: toHostF32(p.grad) }));
    adam.dispose();
    for (const p of ps) p.dispose();
    return out;
  };
  for (const each of [false, true]) {
    const z = run('zero', each), k = run('keep', each);
    z.forEach((s, i) => {
      bitsEqual(k[i]!.master, s.master, `master ${i}`);
      bitsEqual(k[i]!.value, s.value, `bf16 copy ${i}`);
      assert.ok(s.grad.every((v) => v === 0));
      bitsEqual(k[i]!.grad, normals(9 + i, s.grad.length, 1e-2), `gradient ${i} kept`);
    });
  }
});

// ---- the trainer ----

/** Lazy run: every gradient the optimizer is asked to keep is then filled with NaN (a stale value no write may add to). */
class PoisonKeptGrads extends CpuBackend {
  kept = 0;
  /** Each gradient list's values at the gradient norm (sumSquaresMulti), by tensor. */
  atNorm = new Map<Tensor, Float32Array>();
  override adamMulti(list: TensorList<AdamSlot>, h: AdamHyper, grads: GradsAfter = 'zero'): void {
    super.adamMulti(list, h, grads);
    if (grads === 'keep') for (const s of list.entries) { this.fill(s.grad, Number.NaN); this.kept++; }
  }
  override adamLeanMulti(list: TensorList<LeanAdamSlot>, h: LeanAdamHyper, grads: GradsAfter = 'zero'): void {
    super.adamLeanMulti(list, h, grads);
    if (grads === 'keep') for (const s of list.entries) { this.fill(s.grad, Number.NaN); this.kept++; }
  }
  override sumSquaresMulti(out: Tensor, list: TensorList<Tensor>): void {
    for (const t of list.entries) this.atNorm.set(t, toHostF32(t));
    super.sumSquaresMulti(out, list);
  }
}

/** Eager run: the optimizer pass zeroes every gradient, whatever the trainer asks. */
class EagerZeroGrads extends CpuBackend {
  override adamMulti(list: TensorList<AdamSlot>, h: AdamHyper): void { super.adamMulti(list, h, 'zero'); }
  override adamLeanMulti(list: TensorList<LeanAdamSlot>, h: LeanAdamHyper): void { super.adamLeanMulti(list, h, 'zero'); }
}

const model = tinyConfig();
const trainConfig = (recipe: string, micro: number) =>
  mergeTrainConfig(defaultTrainConfig(), { device: 'cpu', recipe, steps: 3, seq_len: 16, micro_batch_size: 2, global_batch_size: 2 * micro, schedule: { warmup_steps: 1 } }, 'test');

interface Run { metrics: { ce: number; lb: number; norm: number }[]; weights: Float32Array[] }

/** `eager`: no gradient is marked when a step starts (the gradients hold zeros, cleared of their marks). */
function train(backend: CpuBackend, recipe: string, micro: number, opts: { eager?: boolean; setup?: (t: Training) => void } = {}): Run & { training: Training } {
  const cfg = trainConfig(recipe, micro);
  const training = new Training(cfg, model, backend);
  training.model.initialize(cfg.seed);
  opts.setup?.(training);
  const data = fixedBatches(model.vocab_size, cfg.micro_batch_size, cfg.seq_len);
  const metrics = Array.from({ length: cfg.steps }, (_, s) => {
    if (opts.eager) {
      for (const p of training.model.params) settleGrad(p.grad);
      assert.ok(training.model.params.every((p) => !isGradZeroPending(p.grad) && toHostF32(p.grad).every((v) => v === 0)), 'eager: zeroed, unmarked gradients');
    }
    const m = training.step(s, data);
    return { ce: m.crossEntropy, lb: m.loadBalance, norm: m.gradientNorm };
  });
  const weights = training.checkpointEntries().map((e) => toHostF32(e.tensor));
  return { metrics, weights, training };
}

for (const recipe of ['default', 'lean'] as const) {
  for (const micro of [1, 3]) {
    test(`trainer, ${recipe} recipe, ${micro} micro-batch${micro > 1 ? 'es' : ''}: lazy zeroing gives the eager run's losses, norms and weights bit for bit`, () => {
      const lazyBackend = new PoisonKeptGrads();
      const lazy = train(lazyBackend, recipe, micro), eager = train(new EagerZeroGrads(), recipe, micro, { eager: true });
      assert.ok(lazyBackend.kept > 0, 'the lazy run kept (and poisoned) gradients');
      lazy.metrics.forEach((m, s) => {
        assert.ok(Number.isFinite(m.norm) && Number.isFinite(m.ce), `step ${s + 1}: finite`);
        for (const k of ['ce', 'lb', 'norm'] as const) assert.ok(Object.is(m[k], eager.metrics[s]![k]), `step ${s + 1} ${k}: lazy ${m[k]}, eager ${eager.metrics[s]![k]}`);
      });
      lazy.weights.forEach((w, i) => bitsEqual(w, eager.weights[i]!, `checkpoint tensor ${i}`));
      lazy.training.dispose(); eager.training.dispose();
    });
  }
}

/** A dispatcher that runs the owned experts on the tokens in a way a test chooses (single process: every expert is local). */
class TestDispatch implements ExpertDispatchHook {
  constructor(private readonly mode: 'first-expert' | 'no-expert') {}
  routedOutput(x: Tensor, _indices: Tensor, _weights: Tensor, local: LocalExperts): Tensor {
    if (this.mode === 'no-expert') return scale(x, 0);
    // Every token to the first owned expert, none to the others.
    return local.run(x, [x.shape[0]!, ...new Array<number>(local.count - 1).fill(0)]);
  }
}

for (const mode of ['first-expert', 'no-expert'] as const) {
  for (const recipe of ['default', 'lean'] as const) {
    test(`trainer, ${recipe} recipe: routed experts unused in a step (${mode === 'first-expert' ? 'given no tokens' : 'their layer runs none'}) have gradient exactly zero at the norm`, () => {
      const backend = new PoisonKeptGrads();
      const run = train(backend, recipe, 2, { setup: (t) => { t.model.expertDispatch = new TestDispatch(mode); } });
      assert.ok(backend.kept > 0);
      run.metrics.forEach((m, s) => assert.ok(Number.isFinite(m.norm), `step ${s + 1}: norm ${m.norm}`));
      let unused = 0, used = 0;
      for (const { name, param } of namedParameters(run.training.model)) {
        const g = backend.atNorm.get(param.grad);
        assert.ok(g, `${name}: its gradient is in the norm`);
        const routed = /\.mlp\.experts\.(\d+)\./.exec(name);
        if (routed && (mode === 'no-expert' || routed[1] !== '0')) {
          assert.ok(g.every((v) => Object.is(v, 0)), `${name}: unused, its gradient at the last step's norm is exactly +0`);
          unused++;
        } else if (routed) {
          assert.ok(g.some((v) => v !== 0) && g.every(Number.isFinite), `${name}: the used expert's gradient`);
          used++;
        }
      }
      const moeLayers = model.num_hidden_layers - model.first_k_dense_replace;
      assert.equal(unused, 3 * moeLayers * (mode === 'no-expert' ? model.n_routed_experts : model.n_routed_experts - 1));
      assert.equal(used, mode === 'no-expert' ? 0 : 3 * moeLayers);
      run.training.dispose();
    });
  }
}
