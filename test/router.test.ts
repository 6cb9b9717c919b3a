// The MoE router and its bookkeeping on hand-computed cases: softmax probabilities, top-k picks
// (ties to the lower index), expertOrder's stable grouping and offsets, bincount, the combine
// weights (norm_topk_prob, routed_scaling_factor) against a float64 reference of the whole MoE
// layer, and the load-balance loss in its three forms. The model's moe() and loadBalanceLoss()
// are private; the test reaches them through a cast so the formulas are checked where they live.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { backward } from '../src/autograd/backward.js';
import { fromHost, toHostF32, toHostI32, item } from '../src/ops/create.js';
import { softmax } from '../src/ops/softmax.js';
import { topk, bincount, expertOrder } from '../src/ops/routing.js';
import { DeepseekV2, type LoadBalance } from '../src/models/deepseek_v2.js';
import { parseDeepseekV2Config, type DeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { namedParameters } from '../src/models/deepseek_v2_names.js';
import type { DecoderLayer, Mlp } from '../src/models/deepseek_v2_weights.js';
import type { Param } from '../src/nn/param.js';
import { tidy } from '../src/tensor/scope.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { gradCheck, randomValues, GRAD_TOLERANCE } from './helpers/grad_check.js';

const be = new CpuBackend();

interface MoeInternals {
  moe(layer: DecoderLayer<Param>, x: Tensor, B: number, S: number, lb: LoadBalance): { out: Tensor; lb: Tensor | null };
  loadBalanceLoss(l: number, probs: Tensor, slots: Tensor, B: number, S: number, lb: LoadBalance): Tensor;
}
const internals = (m: DeepseekV2) => m as unknown as MoeInternals;

function moeConfig(over: Record<string, unknown>): DeepseekV2Config {
  return parseDeepseekV2Config({
    vocab_size: 11, hidden_size: 6, intermediate_size: 8, moe_intermediate_size: 5, num_hidden_layers: 1,
    num_attention_heads: 1, kv_lora_rank: 4, qk_nope_head_dim: 2, qk_rope_head_dim: 2, v_head_dim: 2,
    n_routed_experts: 4, n_shared_experts: 1, num_experts_per_tok: 2, first_k_dense_replace: 0, ...over,
  }, 'router test config');
}

const close = (a: number, b: number, tol = 1e-6) => Math.abs(a - b) <= tol * Math.max(1, Math.abs(b));

describe('router pieces', () => {
  test('softmax router probabilities', () => {
    tidy(() => {
      const p = toHostF32(softmax(fromHost(be, [0, Math.log(2), Math.log(3), 5, 5, 5], [2, 3], 'f32')));
      [1 / 6, 2 / 6, 3 / 6, 1 / 3, 1 / 3, 1 / 3].forEach((w, i) => assert.ok(close(p[i]!, w), `p[${i}] ${p[i]} vs ${w}`));
    });
  });
  test('topk: descending values, ties broken by the lower index', () => {
    tidy(() => {
      const x = fromHost(be, [0.3, 0.5, 0.5, 0.1, 0.2, 0.2, 0.2, 0.2, 0.1, 0.4, 0.3, 0.4], [3, 4], 'f32');
      const k2 = topk(x, 2);
      assert.deepEqual(Array.from(toHostI32(k2.indices)), [1, 2, 0, 1, 1, 3]);
      assert.deepEqual(Array.from(toHostF32(k2.values)), [0.5, 0.5, 0.2, 0.2, 0.4, 0.4].map(Math.fround));
      const k3 = topk(x, 3);
      assert.deepEqual(Array.from(toHostI32(k3.indices)), [1, 2, 0, 0, 1, 2, 1, 3, 2]);
      const k4 = topk(x, 4);
      assert.deepEqual(Array.from(toHostI32(k4.indices)), [1, 2, 0, 3, 0, 1, 2, 3, 1, 3, 2, 0]);
    });
  });
  test('expertOrder: stable grouping by expert and group offsets (an empty expert included)', () => {
    tidy(() => {
      const { order, offsets } = expertOrder(fromHost(be, [2, 0, 2, 1, 0, 2, 3, 0], [8], 'i32'), 5);
      assert.deepEqual(Array.from(toHostI32(order)), [1, 4, 7, 3, 0, 2, 5, 6]);
      assert.deepEqual(Array.from(toHostI32(offsets)), [0, 3, 4, 7, 8, 8]);
    });
  });
  test('bincount per group and over a flat index list', () => {
    tidy(() => {
      assert.deepEqual(Array.from(toHostI32(bincount(fromHost(be, [0, 1, 1, 2, 2, 2], [2, 3], 'i32'), 4))), [1, 2, 0, 0, 0, 0, 3, 0]);
      const flat = bincount(fromHost(be, [3, 3, 0, 1, 3], [5], 'i32'), 4);
      assert.deepEqual(flat.shape, [4]);
      assert.deepEqual(Array.from(toHostI32(flat)), [1, 1, 0, 3]);
    });
  });
});

/** float64 reference of one MoE layer: softmax router, top-k, combine weights, experts + shared. */
function moeReference(m: DeepseekV2, xv: Float32Array, N: number): Float64Array {
  const c = m.config, D = c.hidden_size, E = c.n_routed_experts, k = c.num_experts_per_tok, moe = m.layers[0]!.moe!;
  const w = (p: Param) => toHostF32(p.value);
  const mlp = (e: Mlp<Param>, x: Float32Array, n: number, F: number): Float64Array => {
    const g = w(e.gate), u = w(e.up), d = w(e.down);
    const h = new Float64Array(F);
    for (let f = 0; f < F; f++) {
      let a = 0, b = 0;
      for (let j = 0; j < D; j++) { a += g[f * D + j]! * x[n * D + j]!; b += u[f * D + j]! * x[n * D + j]!; }
      h[f] = (a / (1 + Math.exp(-a))) * b;
    }
    const out = new Float64Array(D);
    for (let j = 0; j < D; j++) for (let f = 0; f < F; f++) out[j] += d[j * F + f]! * h[f]!;
    return out;
  };
  const gate = w(moe.router);
  const out = new Float64Array(N * D);
  for (let n = 0; n < N; n++) {
    const logits = Array.from({ length: E }, (_, e) => { let s = 0; for (let j = 0; j < D; j++) s += gate[e * D + j]! * xv[n * D + j]!; return s; });
    const mx = Math.max(...logits), z = logits.reduce((a, l) => a + Math.exp(l - mx), 0);
    const probs = logits.map((l) => Math.exp(l - mx) / z);
    const picks = probs.map((pr, e) => ({ pr, e })).sort((a, b) => b.pr - a.pr || a.e - b.e).slice(0, k);
    let weights = picks.map((q) => q.pr);
    // DeepSeek-V2 (HF): renormalise when norm_topk_prob and k > 1, else scale; never both.
    if (c.norm_topk_prob && c.num_experts_per_tok > 1) { const s = weights.reduce((a, b) => a + b, 0) + 1e-20; weights = weights.map((x) => x / s); }
    else weights = weights.map((x) => x * c.routed_scaling_factor);
    picks.forEach((q, j) => { const y = mlp(moe.experts[q.e]!, xv, n, c.moe_intermediate_size); for (let i = 0; i < D; i++) out[n * D + i] += weights[j]! * y[i]!; });
    if (moe.shared) { const y = mlp(moe.shared, xv, n, c.moe_intermediate_size * c.n_shared_experts); for (let i = 0; i < D; i++) out[n * D + i] += y[i]!; }
  }
  return out;
}

describe('MoE layer against a float64 reference (combine weights)', () => {
  const cases: [string, Record<string, unknown>][] = [
    ['plain top-k probabilities', {}],
    ['norm_topk_prob', { norm_topk_prob: true }],
    ['routed_scaling_factor 2.5', { routed_scaling_factor: 2.5 }],
    ['norm_topk_prob and routed_scaling_factor 16, no shared expert, top-3', { norm_topk_prob: true, routed_scaling_factor: 16, n_shared_experts: 0, num_experts_per_tok: 3 }],
  ];
  for (const [name, over] of cases) {
    test(name, () => {
      const m = new DeepseekV2(moeConfig(over), be, 'f32');
      m.initialize(3);
      const D = 6, E = m.config.n_routed_experts, B = 2, S = 3, N = B * S;
      // A router with O(1) logits, so the top-k picks are far from ties.
      m.layers[0]!.moe!.router.load(randomValues(E * D, 40));
      for (const { name, param } of namedParameters(m)) if (name.includes('_proj')) param.load(randomValues(param.size, name.length * 7 + 1, 0.5));
      const xv = randomValues(N * D, 41);
      const want = moeReference(m, xv, N);
      tidy(() => {
        const got = toHostF32(internals(m).moe(m.layers[0]!, fromHost(be, xv, [N, D], 'f32'), B, S, { form: 'micro-batch', alpha: 0 }).out);
        for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i]! - want[i]!) < 1e-4 * Math.max(1, Math.abs(want[i]!)), `out[${i}] ${got[i]} vs ${want[i]}`);
      });
      m.dispose();
    });
  }

  test('an expert that receives no token, and the gradient of the MoE output with respect to x', () => {
    const m = new DeepseekV2(moeConfig({ norm_topk_prob: true }), be, 'f32');
    m.initialize(5);
    const D = 6, E = 4, B = 1, S = 5, N = B * S;
    // Positive inputs and a strongly negative router row 3: expert 3 is never picked.
    const gate = randomValues(E * D, 50);
    for (let j = 0; j < D; j++) gate[3 * D + j] = -5;
    m.layers[0]!.moe!.router.load(gate);
    for (const { name, param } of namedParameters(m)) if (name.includes('_proj')) param.load(randomValues(param.size, name.length * 3 + 2, 0.5));
    const xv = randomValues(N * D, 51).map((v) => Math.abs(v) + 0.1);
    const want = moeReference(m, xv, N);
    tidy(() => {
      const got = toHostF32(internals(m).moe(m.layers[0]!, fromHost(be, xv, [N, D], 'f32'), B, S, { form: 'micro-batch', alpha: 0 }).out);
      for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i]! - want[i]!) < 1e-4 * Math.max(1, Math.abs(want[i]!)));
    });
    const r = gradCheck(be, [{ shape: [N, D], values: xv }], ([x]) => internals(m).moe(m.layers[0]!, x!, B, S, { form: 'micro-batch', alpha: 0 }).out);
    assert.ok(r.relErrors[0]! < GRAD_TOLERANCE, `d(moe)/dx relative error ${r.relErrors[0]}`);
    assert.equal(r.leakedBytes, 0);
    m.dispose();
  });

  test('the router weight stays f32 in a bf16 model', () => {
    const m = new DeepseekV2(moeConfig({}), be, 'bf16');
    assert.equal(m.layers[0]!.moe!.router.value.dtype, 'f32');
    assert.equal(m.layers[0]!.moe!.experts[0]!.up.value.dtype, 'bf16');
    m.dispose();
  });
});

// Hand example: B=2 sequences of S=2 tokens, E=3 experts, k=2.
//   probs  t0 [.5 .3 .2]  t1 [.2 .6 .2]  t2 [.1 .1 .8]  t3 [.4 .4 .2]
//   slots  t0 {0,1}       t1 {1,2}       t2 {2,0}       t3 {0,1}
// micro-batch: counts [3,3,2], f = counts/8; P = column means [.3,.35,.35];
//   Σ f·P = (.9+1.05+.7)/8 = .33125 → loss = α·3·.33125 = .99375α.
// sequence: seq0 f = [1,2,1]/4, P = [.35,.45,.2] → .3625; seq1 f = [2,1,1]/4, P = [.25,.25,.5] → .3125;
//   loss = α·3·mean(.3625,.3125) = 1.0125α.
// global-batch: micro-batch 1 as above (.99375α); micro-batch 2 with the same probs and slots
//   {1,2},{1,2},{1,0},{2,1} (counts [1,4,3]) sees total counts [4,7,5] over 16 slots:
//   Σ f·P = (1.2+2.45+1.75)/16 = .3375 → 1.0125α. beginStep() clears the totals.
describe('load-balance loss, three forms, hand-computed', () => {
  const probsV = [0.5, 0.3, 0.2, 0.2, 0.6, 0.2, 0.1, 0.1, 0.8, 0.4, 0.4, 0.2];
  const slots1 = [0, 1, 1, 2, 2, 0, 0, 1], slots2 = [1, 2, 1, 2, 1, 0, 2, 1];
  const alpha = 0.01, B = 2, S = 2;
  const lossOf = (m: DeepseekV2, lb: LoadBalance, slots: number[]) => tidy(() =>
    item(internals(m).loadBalanceLoss(0, fromHost(be, probsV, [4, 3], 'f32'), fromHost(be, slots, [8], 'i32'), B, S, lb)));

  test('micro-batch, sequence and global-batch values', () => {
    const m = new DeepseekV2(moeConfig({ n_routed_experts: 3, num_experts_per_tok: 2 }), be, 'f32');
    assert.ok(close(lossOf(m, { form: 'micro-batch', alpha }, slots1), 0.99375 * alpha), 'micro-batch');
    assert.ok(close(lossOf(m, { form: 'sequence', alpha }, slots1), 1.0125 * alpha), 'sequence');
    m.beginStep();
    assert.ok(close(lossOf(m, { form: 'global-batch', alpha }, slots1), 0.99375 * alpha), 'global-batch, first micro-batch');
    assert.ok(close(lossOf(m, { form: 'global-batch', alpha }, slots2), 1.0125 * alpha), 'global-batch, second micro-batch (accumulated counts)');
    m.beginStep();
    assert.ok(close(lossOf(m, { form: 'global-batch', alpha }, slots1), 0.99375 * alpha), 'global-batch after beginStep');
    m.dispose();
  });

  test('gradients with respect to the router probabilities: α·E·f_i/N (micro-batch), α·E·f_bi/(B·S) (sequence)', () => {
    const m = new DeepseekV2(moeConfig({ n_routed_experts: 3, num_experts_per_tok: 2 }), be, 'f32');
    const gradOf = (lb: LoadBalance) => tidy(() => {
      const probs = fromHost(be, probsV, [4, 3], 'f32');
      probs.requiresGrad = true;
      backward(internals(m).loadBalanceLoss(0, probs, fromHost(be, slots1, [8], 'i32'), B, S, lb));
      const g = toHostF32(probs.grad!);
      probs.grad!.dispose();
      return Array.from(g);
    });
    const f = [3 / 8, 3 / 8, 2 / 8];
    const micro = gradOf({ form: 'micro-batch', alpha });
    micro.forEach((g, i) => assert.ok(close(g, alpha * 3 * f[i % 3]! / 4), `micro-batch dP[${i}] ${g}`));
    const fSeq = [[0.25, 0.5, 0.25], [0.5, 0.25, 0.25]];
    const seq = gradOf({ form: 'sequence', alpha });
    seq.forEach((g, i) => { const b = Math.floor(i / 6); assert.ok(close(g, alpha * 3 * fSeq[b]![i % 3]! / (B * S)), `sequence dP[${i}] ${g}`); });
    m.dispose();
  });
});
