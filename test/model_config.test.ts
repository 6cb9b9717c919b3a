// The DeepSeek-V2 configuration: parameter count and FLOPs of the published V2-Lite config
// against numbers derived by hand here, q-LoRA parameter names, every bad-config case giving an
// Error that names the field, and the YaRN tables against the published formulas
// (Hugging Face DeepseekV2YarnRotaryEmbedding), re-derived independently below.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { backward } from '../src/autograd/backward.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { add } from '../src/ops/elementwise.js';
import { DeepseekV2 } from '../src/models/deepseek_v2.js';
import { loadDeepseekV2Config, parseDeepseekV2Config } from '../src/models/deepseek_v2_config.js';
import { flopsPerToken, parameterCount } from '../src/models/deepseek_v2_weights.js';
import { parameterShapes } from '../src/models/deepseek_v2_names.js';
import { TINY_CONFIG_JSON } from '../src/models/tiny_config.js';
import { inverseFrequencies, ropeTables, yarnMscale, type RopeScaling } from '../src/nn/rope_tables.js';
import { tidy } from '../src/tensor/scope.js';

const LITE_PATH = fileURLToPath(new URL('../../configs/deepseek-v2-lite.json', import.meta.url));
const liteJson = (): Record<string, unknown> => JSON.parse(readFileSync(LITE_PATH, 'utf8')) as Record<string, unknown>;

describe('DeepSeek-V2-Lite sizes', () => {
  test('parameter count is 15,706,484,224 (15.71B)', () => {
    // By hand (D 2048, V 102400, H 16, dq 192, dv 128, kv_lora 512, rope 64):
    //   embed_tokens and lm_head: 2 × 102400·2048                       =    419,430,400
    //   final norm                                                      =          2,048
    //   attention block: q_proj 3072·2048 = 6,291,456; kv_a (512+64)·2048 = 1,179,648;
    //     kv_b 16·256·512 = 2,097,152; o_proj 2048·2048 = 4,194,304; norms 2048+512+2048
    //     = 13,767,168 per layer, × 27                                  =    371,713,536
    //   dense SwiGLU (layer 0): 3·10944·2048                            =     67,239,936
    //   MoE layer: router 64·2048 = 131,072; 64 experts × 3·1408·2048 = 553,648,128;
    //     shared 3·2816·2048 = 17,301,504 → 571,080,704 per layer, × 26 = 14,848,098,304
    //   total                                                           = 15,706,484,224
    const c = loadDeepseekV2Config(LITE_PATH);
    assert.equal(parameterCount(c), 15_706_484_224);
  });
  test('FLOPs per token: ≈3.37e9 for the 4-layer slice and ≈15.5e9 for the full model at s=2048 (TARGETS.md)', () => {
    // 4 layers: 6 × (lm_head 209,715,200 + attention matrices 4 × 13,762,560 + dense 67,239,936
    //   + 3 MoE × (router 131,072 + 6/64 of the experts 51,904,512 + shared 17,301,504))
    //   = 6 × 540,016,640 + 3·16·2048·320·4 = 3,240,099,840 + 125,829,120 = 3,365,928,960.
    const four = parseDeepseekV2Config({ ...liteJson(), num_hidden_layers: 4 }, 'four-layer');
    assert.equal(flopsPerToken(four, 2048), 3_365_928_960);
    assert.ok(Math.abs(flopsPerToken(four, 2048) / 3.37e9 - 1) < 0.02);
    // 27 layers: 6 × 2,451,308,544 + 3·16·2048·320·27 = 14,707,851,264 + 849,346,560 = 15,557,197,824.
    const full = loadDeepseekV2Config(LITE_PATH);
    assert.equal(flopsPerToken(full, 2048), 15_557_197_824);
    assert.ok(Math.abs(flopsPerToken(full, 2048) / 15.5e9 - 1) < 0.02);
  });
});

describe('q_lora_rank', () => {
  test('a q_lora_rank replaces q_proj by q_a_proj → q_a_layernorm → q_b_proj', () => {
    const c = parseDeepseekV2Config({ ...liteJson(), q_lora_rank: 1536 }, 'q-lora');
    const names = new Map(parameterShapes(c).map((p) => [p.name, p.shape]));
    assert.equal(names.has('model.layers.0.self_attn.q_proj.weight'), false);
    assert.deepEqual(names.get('model.layers.0.self_attn.q_a_proj.weight'), [1536, 2048]);
    assert.deepEqual(names.get('model.layers.0.self_attn.q_a_layernorm.weight'), [1536]);
    assert.deepEqual(names.get('model.layers.26.self_attn.q_b_proj.weight'), [16 * 192, 1536]);
    const lite = loadDeepseekV2Config(LITE_PATH);
    assert.deepEqual(new Map(parameterShapes(lite).map((p) => [p.name, p.shape])).get('model.layers.0.self_attn.q_proj.weight'), [16 * 192, 2048]);
  });
  test('a tiny q-LoRA model trains: every q-LoRA parameter gets a gradient', () => {
    const be = new CpuBackend();
    const m = new DeepseekV2(parseDeepseekV2Config({ ...TINY_CONFIG_JSON, q_lora_rank: 12, num_hidden_layers: 2 }, 'tiny q-lora'), be, 'f32');
    m.initialize(2);
    const B = 1, S = 6;
    tidy(() => {
      const ids = fromHost(be, [1, 5, 9, 200, 3, 7], [B, S], 'i32'), labels = fromHost(be, [5, 9, 200, 3, 7, 1], [B, S], 'i32');
      const r = m.forward(ids, labels, B * S, { form: 'micro-batch', alpha: 0.01 });
      backward(add(r.crossEntropy, r.loadBalance));
    });
    for (const name of ['aProj', 'aNorm', 'bProj'] as const) for (const l of [0, 1]) {
      const g = toHostF32(m.layers[l]!.attn.qLora![name].grad);
      assert.ok(g.some((x) => x !== 0) && g.every(Number.isFinite), `layer ${l} ${name} has no gradient`);
    }
    m.dispose();
  });
});

describe('bad configs give an Error naming the field', () => {
  const bad = (over: Record<string, unknown>, ...mustMention: (string | RegExp)[]) => {
    const raw = { ...liteJson(), ...over };
    assert.throws(() => parseDeepseekV2Config(raw, 'cfg.json'), (e: unknown) => {
      assert.ok(e instanceof Error, 'an Error');
      for (const m of mustMention) {
        if (typeof m === 'string') assert.ok(e.message.includes(m), `message "${e.message}" should mention ${m}`);
        else assert.match(e.message, m);
      }
      assert.ok(e.message.startsWith('cfg.json'), `message "${e.message}" should name the source`);
      return true;
    });
  };
  test('unknown or mistyped field, with a "did you mean"', () => {
    const raw = liteJson();
    raw['num_atention_heads'] = raw['num_attention_heads'];
    delete raw['num_attention_heads'];
    assert.throws(() => parseDeepseekV2Config(raw, 'cfg.json'), /num_atention_heads.*did you mean "num_attention_heads"/);
    bad({ totally_new_knob: 3 }, 'totally_new_knob');
  });
  test('heads not an integer, and other non-integers', () => {
    bad({ num_attention_heads: 2.5 }, 'num_attention_heads');
    bad({ hidden_size: '2048' }, 'hidden_size');
    bad({ num_hidden_layers: -1 }, 'num_hidden_layers');
    bad({ num_hidden_layers: 0 }, 'num_hidden_layers');
  });
  test('num_experts_per_tok larger than n_routed_experts', () => {
    bad({ num_experts_per_tok: 65 }, 'num_experts_per_tok', 'n_routed_experts');
  });
  test('odd qk_rope_head_dim', () => {
    bad({ qk_rope_head_dim: 63 }, 'qk_rope_head_dim');
  });
  test('num_key_value_heads different from num_attention_heads', () => {
    bad({ num_key_value_heads: 8 }, 'num_key_value_heads', 'num_attention_heads');
  });
  test('wrong types', () => {
    bad({ norm_topk_prob: 'no' }, 'norm_topk_prob');
    bad({ rope_theta: '10000' }, 'rope_theta');
    bad({ q_lora_rank: 'none' }, 'q_lora_rank');
    bad({ rope_scaling: 40 }, 'rope_scaling');
    bad({ rope_scaling: { type: 'linear', factor: 4 } }, 'rope_scaling');
    bad({ rope_scaling: { type: 'yarn', factor: 'big' } }, 'rope_scaling.factor');
    bad({ rope_scaling: { type: 'yarn', factor: 40, betta_fast: 32 } }, 'rope_scaling.betta_fast');
  });
  test('missing required field, first_k_dense_replace beyond the layers, tied embeddings', () => {
    const raw = liteJson();
    delete raw['kv_lora_rank'];
    assert.throws(() => parseDeepseekV2Config(raw, 'cfg.json'), /kv_lora_rank/);
    bad({ first_k_dense_replace: 28 }, 'first_k_dense_replace');
    bad({ tie_word_embeddings: true }, 'tie_word_embeddings');
    assert.throws(() => parseDeepseekV2Config([1, 2], 'cfg.json'), /cfg\.json: expected a JSON object/);
  });
  test('q_lora_rank 0 is refused (null means "no q-LoRA"; 0 would build a rank-0 bottleneck)', () => {
    bad({ q_lora_rank: 0 }, 'q_lora_rank');
  });
  // Fields moetrain reads as "ignored" must not silently change the model: a value asking for
  // behaviour moetrain does not implement has to be refused, naming the field.
  test('topk_method other than greedy is refused (full DeepSeek-V2 uses group_limited_greedy)', () => {
    bad({ topk_method: 'group_limited_greedy', n_group: 8, topk_group: 3 }, 'topk_method');
  });
  test('scoring_func other than softmax is refused', () => {
    bad({ scoring_func: 'sigmoid' }, 'scoring_func');
  });
  test('hidden_act other than silu is refused', () => {
    bad({ hidden_act: 'gelu' }, 'hidden_act');
  });
  test('missing file and invalid JSON', () => {
    const dir = mkdtempSync(join(tmpdir(), 'moetrain-cfg-'));
    try {
      const missing = join(dir, 'nope.json');
      assert.throws(() => loadDeepseekV2Config(missing), (e: unknown) => e instanceof Error && e.message.includes(missing) && /cannot read/.test(e.message));
      const broken = join(dir, 'broken.json');
      writeFileSync(broken, '{"hidden_size": 2048,');
      assert.throws(() => loadDeepseekV2Config(broken), (e: unknown) => e instanceof Error && e.message.includes(broken) && /not valid JSON/.test(e.message));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// YaRN, re-derived from the published formulas (HF DeepseekV2YarnRotaryEmbedding):
//   find_correction_dim(r) = dim·ln(max_pos/(r·2π)) / (2·ln base)
//   low = max(floor(correction_dim(beta_fast)), 0), high = min(ceil(correction_dim(beta_slow)), dim−1)
//   ramp_j = clamp((j − low)/(high − low), 0, 1) (high += 0.001 when equal), mask_j = 1 − ramp_j
//   inv_freq_j = freq_inter_j·(1 − mask_j) + freq_extra_j·mask_j, freq_extra = base^(−2j/dim),
//   freq_inter = freq_extra / factor
//   get_mscale(s, m) = 1 if s ≤ 1 else 0.1·m·ln(s) + 1
//   cos/sin tables multiplied by get_mscale(factor, mscale)/get_mscale(factor, mscale_all_dim)
//   softmax scale = (dq)^−½ · get_mscale(factor, mscale_all_dim)²
describe('YaRN tables (V2-Lite rope_scaling)', () => {
  const lite: RopeScaling = { type: 'yarn', factor: 40, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1, mscale: 0.707, mscale_all_dim: 0.707 };
  function derived(dim: number, base: number, s: RopeScaling) {
    const corr = (r: number) => (dim * Math.log(s.original_max_position_embeddings / (r * 2 * Math.PI))) / (2 * Math.log(base));
    const low = Math.max(Math.floor(corr(s.beta_fast)), 0);
    let high = Math.min(Math.ceil(corr(s.beta_slow)), dim - 1);
    if (low === high) high += 0.001;
    const inv: number[] = [];
    for (let j = 0; j < dim / 2; j++) {
      const extra = Math.pow(base, -(2 * j) / dim), inter = extra / s.factor;
      const ramp = Math.min(1, Math.max(0, (j - low) / (high - low))), mask = 1 - ramp;
      inv.push(inter * (1 - mask) + extra * mask);
    }
    return { low, high, inv };
  }
  const mscale = (sc: number, m: number) => (sc <= 1 ? 1 : 0.1 * m * Math.log(sc) + 1);

  test('inverse frequencies for factor 40, dim 64, base 1e4 (ramp from 10 to 23)', () => {
    const d = derived(64, 10000, lite);
    // corr(32) = 64·ln(4096/(64π))/(2 ln 1e4) = 10.47 → low 10; corr(1) = 64·ln(4096/2π)/(2 ln 1e4) = 22.51 → high 23.
    assert.equal(d.low, 10); assert.equal(d.high, 23);
    const got = inverseFrequencies(64, 10000, lite);
    assert.equal(got.length, 32);
    d.inv.forEach((w, j) => assert.ok(Math.abs(got[j]! / w - 1) < 1e-6, `inv_freq[${j}] ${got[j]} vs ${w}`));
    assert.equal(got[0], 1); // below the ramp: original frequency
    assert.ok(Math.abs(got[31]! - Math.pow(10000, -62 / 64) / 40) < 1e-12); // above the ramp: interpolated
  });
  test('other factors and betas (factor 4, 16; a short original context; plain RoPE)', () => {
    for (const s of [
      { ...lite, factor: 4 }, { ...lite, factor: 16, beta_fast: 16, beta_slow: 2 },
      { ...lite, original_max_position_embeddings: 512 },
    ]) {
      for (const dim of [64, 16]) {
        const d = derived(dim, 10000, s), got = inverseFrequencies(dim, 10000, s);
        d.inv.forEach((w, j) => assert.ok(Math.abs(got[j]! / w - 1) < 1e-6, `factor ${s.factor} dim ${dim} inv_freq[${j}] ${got[j]} vs ${w}`));
      }
    }
    const plain = inverseFrequencies(8, 10000, null);
    [1, 0.1, 0.01, 0.001].forEach((w, j) => assert.ok(Math.abs(plain[j]! / w - 1) < 1e-9));
  });
  test('yarnMscale and the cos/sin magnitude', () => {
    assert.ok(Math.abs(yarnMscale(40, 0.707) - (0.1 * 0.707 * Math.log(40) + 1)) < 1e-12);
    assert.ok(Math.abs(yarnMscale(40, 0.707) - 1.2608046) < 1e-6);
    assert.equal(yarnMscale(1, 0.707), 1);
    assert.equal(yarnMscale(0.5, 1), 1);
    // V2-Lite: mscale = mscale_all_dim, so the tables carry magnitude 1; with mscale 1 and
    // mscale_all_dim 0 they carry 1 + 0.1·ln 40.
    for (const [s, mag] of [[lite, 1], [{ ...lite, mscale: 1, mscale_all_dim: 0 }, 1 + 0.1 * Math.log(40)]] as const) {
      const S = 9, dim = 64, t = ropeTables(S, dim, 10000, s), inv = derived(dim, 10000, s).inv;
      for (let p = 0; p < S; p++) for (let j = 0; j < dim / 2; j++) {
        const angle = p * inv[j]!;
        assert.ok(Math.abs(t.cos[p * 32 + j]! - Math.cos(angle) * mag) < 2e-6 * mag, `cos[${p},${j}]`);
        assert.ok(Math.abs(t.sin[p * 32 + j]! - Math.sin(angle) * mag) < 2e-6 * mag, `sin[${p},${j}]`);
      }
    }
  });
  test('the attention softmax scale carries mscale_all_dim² (V2-Lite widths scaled down)', () => {
    const be = new CpuBackend();
    const m = new DeepseekV2(parseDeepseekV2Config({ ...TINY_CONFIG_JSON, rope_scaling: { ...lite } }, 'tiny yarn'), be, 'f32');
    const want = (16 + 8) ** -0.5 * mscale(40, 0.707) ** 2;
    assert.ok(Math.abs(m.softmaxScale / want - 1) < 1e-12, `${m.softmaxScale} vs ${want}`);
    m.dispose();
    const plain = new DeepseekV2(parseDeepseekV2Config({ ...TINY_CONFIG_JSON }, 'tiny'), be, 'f32');
    assert.equal(plain.softmaxScale, 1 / Math.sqrt(24));
    plain.dispose();
  });
});
