// The typed parameter structure and model parts: the HF names table against an independent list
// (so checkpoints keep their names and order), initialisation seeds by whole-model index, parts
// (a pipeline stage's layers, an expert-parallel rank's experts) holding exactly the matching
// subset of the whole model with identical initial values, stages that chain to the whole
// model's loss, expert halves whose routed outputs add up to the whole MoE layer, a whole-model
// checkpoint loaded into a part, and bad parts rejected.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { fromHost, toHostF32, item } from '../src/ops/create.js';
import { noGrad } from '../src/autograd/tape.js';
import { tidy } from '../src/tensor/scope.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { DeepseekV2, type LoadBalance } from '../src/models/deepseek_v2.js';
import { parseDeepseekV2Config, type DeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { namedParameters, parameterShapes } from '../src/models/deepseek_v2_names.js';
import { buildWeights, parameterCount, wholeModel, type DecoderLayer, type ModelPart } from '../src/models/deepseek_v2_weights.js';
import { TINY_CONFIG_JSON } from '../src/models/tiny_config.js';
import type { Param } from '../src/nn/param.js';
import { Adam } from '../src/optim/adam.js';
import { loadCheckpoint, saveCheckpoint } from '../src/train/checkpoint.js';

const be = new CpuBackend();
const tiny = (over: Record<string, unknown> = {}): DeepseekV2Config => parseDeepseekV2Config({ ...TINY_CONFIG_JSON, ...over }, 'parts test');
/** Three layers (one dense, two MoE), 8 routed experts, one shared. */
const c3 = tiny({ num_hidden_layers: 3 });

/** HF names and shapes of a whole DeepSeek-V2, written out here independently of the model code. */
function hfNames(c: DeepseekV2Config): [string, number[]][] {
  const D = c.hidden_size, H = c.num_attention_heads, dq = c.qk_nope_head_dim + c.qk_rope_head_dim;
  const out: [string, number[]][] = [['model.embed_tokens.weight', [c.vocab_size, D]]];
  const mlp = (p: string, F: number) => out.push([`${p}.gate_proj.weight`, [F, D]], [`${p}.up_proj.weight`, [F, D]], [`${p}.down_proj.weight`, [D, F]]);
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}`, a = `${p}.self_attn`;
    out.push([`${p}.input_layernorm.weight`, [D]]);
    if (c.q_lora_rank === null) out.push([`${a}.q_proj.weight`, [H * dq, D]]);
    else out.push([`${a}.q_a_proj.weight`, [c.q_lora_rank, D]], [`${a}.q_a_layernorm.weight`, [c.q_lora_rank]], [`${a}.q_b_proj.weight`, [H * dq, c.q_lora_rank]]);
    out.push([`${a}.kv_a_proj_with_mqa.weight`, [c.kv_lora_rank + c.qk_rope_head_dim, D]], [`${a}.kv_a_layernorm.weight`, [c.kv_lora_rank]],
      [`${a}.kv_b_proj.weight`, [H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank]], [`${a}.o_proj.weight`, [D, H * c.v_head_dim]],
      [`${p}.post_attention_layernorm.weight`, [D]]);
    if (l < c.first_k_dense_replace) { mlp(`${p}.mlp`, c.intermediate_size); continue; }
    out.push([`${p}.mlp.gate.weight`, [c.n_routed_experts, D]]);
    for (let e = 0; e < c.n_routed_experts; e++) mlp(`${p}.mlp.experts.${e}`, c.moe_intermediate_size);
    if (c.n_shared_experts > 0) mlp(`${p}.mlp.shared_experts`, c.moe_intermediate_size * c.n_shared_experts);
  }
  out.push(['model.norm.weight', [D]], ['lm_head.weight', [c.vocab_size, D]]);
  return out;
}

/** name → host values of every parameter of a model. */
function values(m: DeepseekV2): Map<string, Float32Array> {
  return new Map(namedParameters(m).map(({ name, param }) => [name, toHostF32(param.master)]));
}

const part = (over: Partial<ModelPart>, c = c3): ModelPart => ({ ...wholeModel(c), ...over });

describe('names table and initialisation order', () => {
  for (const [what, c] of [['q_proj', c3], ['q-LoRA', tiny({ q_lora_rank: 12 })]] as const) {
    test(`HF names and shapes in the checkpoint order (${what})`, () => {
      const want = hfNames(c);
      assert.deepEqual(parameterShapes(c).map((p) => [p.name, p.shape]), want);
      const specs = namedParameters(buildWeights(c, wholeModel(c), (s) => s));
      // The initialisation seed of each parameter is its position in this order.
      assert.deepEqual(specs.map((e) => e.param.index), want.map((_, i) => i));
      assert.equal(parameterCount(c), want.reduce((n, [, s]) => n + s.reduce((a, b) => a * b, 1), 0));
      const m = new DeepseekV2(c, be, 'f32');
      assert.deepEqual(namedParameters(m).map((e) => e.param), m.params, 'model.params is in the names table order');
      m.dispose();
    });
  }
  test('init: o_proj and every down_proj get σ/√(2·layers), norms 1, the router f32 in a bf16 model', () => {
    const m = new DeepseekV2(c3, be, 'bf16');
    m.initialize(7);
    const std = (p: Param) => { const v = toHostF32(p.master); return Math.sqrt(v.reduce((a, x) => a + x * x, 0) / v.length); };
    const sigma = c3.initializer_range, residual = sigma / Math.sqrt(2 * c3.num_hidden_layers);
    const l1 = m.layers[1]!;
    for (const p of [l1.attn.oProj, l1.moe!.experts[3]!.down, l1.moe!.shared!.down, m.layers[0]!.mlp!.down]) assert.ok(Math.abs(std(p) / residual - 1) < 0.1, `residual σ ${std(p)}`);
    for (const p of [l1.attn.qProj!, l1.attn.kvBProj, l1.moe!.experts[3]!.gate, l1.moe!.router, m.lmHead!]) assert.ok(Math.abs(std(p) / sigma - 1) < 0.1, `σ ${std(p)}`);
    for (const p of [l1.inputNorm, l1.attn.kvANorm, m.norm!]) assert.ok(toHostF32(p.master).every((x) => x === 1));
    assert.equal(l1.moe!.router.value.dtype, 'f32');
    assert.equal(l1.moe!.experts[0]!.up.value.dtype, 'bf16');
    m.dispose();
  });
});

describe('model parts', () => {
  test('experts [2, 5) of every MoE layer: exactly the whole model\'s subset (names, shapes, initial values)', () => {
    const whole = new DeepseekV2(c3, be, 'f32'), sub = new DeepseekV2(c3, be, 'f32', part({ experts: [2, 5] }));
    whole.initialize(11); sub.initialize(11);
    const all = values(whole), mine = values(sub);
    const expert = /\.mlp\.experts\.(\d+)\./;
    const want = [...all.keys()].filter((n) => { const e = expert.exec(n); return !e || (Number(e[1]) >= 2 && Number(e[1]) < 5); });
    assert.deepEqual([...mine.keys()], want);
    for (const [n, v] of mine) assert.deepEqual(v, all.get(n), `${n} differs from the whole model's`);
    assert.deepEqual(parameterShapes(c3, sub.part).map((p) => p.name), want);
    assert.equal(sub.layers[1]!.moe!.firstExpert, 2);
    assert.equal(sub.layers[1]!.moe!.experts.length, 3);
    whole.dispose(); sub.dispose();
  });

  test('a 2-stage split partitions the whole model\'s parameters, values included', () => {
    const whole = new DeepseekV2(c3, be, 'f32');
    const a = new DeepseekV2(c3, be, 'f32', part({ layers: [0, 2], head: false }));
    const b = new DeepseekV2(c3, be, 'f32', part({ layers: [2, 3], embed: false }));
    for (const m of [whole, a, b]) m.initialize(5);
    const all = values(whole), va = values(a), vb = values(b);
    assert.equal(va.size + vb.size, all.size);
    assert.deepEqual([...va.keys(), ...vb.keys()], [...all.keys()], 'stage A then stage B is the whole order');
    for (const [n, v] of [...va, ...vb]) assert.deepEqual(v, all.get(n), n);
    assert.equal(a.lmHead, null); assert.equal(b.embed, null); assert.equal(b.layers[0]!.index, 2);
    assert.equal(parameterCount(c3, a.part) + parameterCount(c3, b.part), parameterCount(c3));
    whole.dispose(); a.dispose(); b.dispose();
  });

  test('stages chained embedTokens → runLayers → runLayers → headLoss give the whole model\'s losses', () => {
    const whole = new DeepseekV2(c3, be, 'f32');
    const a = new DeepseekV2(c3, be, 'f32', part({ layers: [0, 2], head: false }));
    const b = new DeepseekV2(c3, be, 'f32', part({ layers: [2, 3], embed: false }));
    for (const m of [whole, a, b]) m.initialize(9);
    const B = 2, S = 5, lb: LoadBalance = { form: 'sequence', alpha: 0.01 };
    const ids = Array.from({ length: B * S }, (_, i) => (i * 41 + 3) % c3.vocab_size), labels = ids.map((t, i) => (i % S === S - 1 ? -100 : (t * 7) % c3.vocab_size));
    noGrad(() => tidy(() => {
      const idT = fromHost(be, ids, [B, S], 'i32'), labT = fromHost(be, labels, [B, S], 'i32');
      const want = whole.forward(idT, labT, B * (S - 1), lb);
      const ra = a.runLayers(a.embedTokens(idT), B, S, lb);
      const rb = b.runLayers(ra.h, B, S, lb);
      assert.equal(item(b.headLoss(rb.h, labT, B * (S - 1))), item(want.crossEntropy));
      const lbSum = item(ra.loadBalance) + item(rb.loadBalance);
      assert.ok(Math.abs(lbSum - item(want.loadBalance)) < 1e-7, `load balance ${lbSum} vs ${item(want.loadBalance)}`);
    }));
    assert.throws(() => tidy(() => a.headLogits(fromHost(be, new Float32Array(c3.hidden_size), [1, c3.hidden_size], 'f32'))), /does not own the head/);
    assert.throws(() => tidy(() => b.embedTokens(fromHost(be, [1], [1, 1], 'i32'))), /does not own the embedding/);
    whole.dispose(); a.dispose(); b.dispose();
  });

  test('the routed outputs of two expert halves add up to the whole MoE layer', () => {
    const c = tiny({ n_shared_experts: 0, num_experts_per_tok: 3 });
    type Internals = { moe(layer: DecoderLayer<Param>, x: Tensor, B: number, S: number, lb: LoadBalance): { out: Tensor } };
    const moeOut = (m: DeepseekV2, x: number[], B: number, S: number) => noGrad(() => tidy(() =>
      toHostF32((m as unknown as Internals).moe(m.layers[1]!, fromHost(be, x, [B * S, c.hidden_size], 'f32'), B, S, { form: 'micro-batch', alpha: 0 }).out)));
    const whole = new DeepseekV2(c, be, 'f32');
    const lo = new DeepseekV2(c, be, 'f32', part({ experts: [0, 3] }, c)), hi = new DeepseekV2(c, be, 'f32', part({ experts: [3, 8] }, c));
    for (const m of [whole, lo, hi]) m.initialize(13);
    // A router with O(1) logits, the same in all three, so tokens spread over both halves.
    const router = Float32Array.from({ length: c.n_routed_experts * c.hidden_size }, (_, i) => Math.sin(i * 1.7) * 0.8);
    for (const m of [whole, lo, hi]) m.layers[1]!.moe!.router.load(router);
    const B = 2, S = 6, x = Array.from({ length: B * S * c.hidden_size }, (_, i) => Math.cos(i * 0.37));
    const want = moeOut(whole, x, B, S), l = moeOut(lo, x, B, S), h = moeOut(hi, x, B, S);
    assert.ok(l.some((v) => v !== 0) && h.some((v) => v !== 0), 'both halves receive tokens');
    for (let i = 0; i < want.length; i++) assert.ok(Math.abs(l[i]! + h[i]! - want[i]!) <= 1e-6 * Math.max(1, Math.abs(want[i]!)), `out[${i}]: ${l[i]} + ${h[i]} vs ${want[i]}`);
    whole.dispose(); lo.dispose(); hi.dispose();
  });

  test('a checkpoint of the whole model loads into a part (names by global expert id)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moetrain-parts-'));
    try {
      const whole = new DeepseekV2(c3, be, 'f32');
      whole.initialize(17);
      const adam = new Adam(whole.params, { type: 'adamw', lr: 1, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0 }, be);
      const ckpt = saveCheckpoint(dir, 1, whole, adam, { keep: 0, config: {} });
      const sub = new DeepseekV2(c3, be, 'f32', part({ layers: [1, 3], experts: [4, 8], embed: false }));
      const subAdam = new Adam(sub.params, adam.config, be);
      assert.equal(loadCheckpoint(ckpt, sub, subAdam), 1);
      const all = values(whole);
      for (const [n, v] of values(sub)) assert.deepEqual(v, all.get(n), n);
      assert.ok(values(sub).has('model.layers.2.mlp.experts.7.down_proj.weight'));
      whole.dispose(); adam.dispose(); sub.dispose(); subAdam.dispose();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a part outside the model is an error naming the range and the bounds', () => {
    assert.throws(() => new DeepseekV2(c3, be, 'f32', part({ layers: [1, 5] })), /layers \[1, 5\).*0 ≤ first ≤ end ≤ 3/);
    assert.throws(() => new DeepseekV2(c3, be, 'f32', part({ experts: [3, 3] })), /experts \[3, 3\).*0 ≤ first < end ≤ 8/);
    assert.throws(() => parameterShapes(c3, part({ experts: [0, 9] })), /experts \[0, 9\)/);
  });
});
