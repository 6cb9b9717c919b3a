// DeepSeek-V2: MLA attention (q_proj or q-LoRA, compressed kv with a shared rotary key) and
// DeepSeekMoE (fp32 softmax router, top-k routed SwiGLU experts plus shared experts), with the
// load-balance loss in three forms. Parameter names are Hugging Face's, so checkpoints in either
// direction need no renaming table.
//
// Shape legend: B batch, S sequence, N = B·S tokens, D hidden, H heads, Dn/Dr/Dv nope/rope/value
// head widths, C kv_lora_rank, E routed experts, k experts per token, V vocabulary.
import type { Backend } from '../backend/backend.js';
import type { DType } from '../tensor/dtype.js';
import { tidy, keep } from '../tensor/scope.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import { fromHost, toHostI32 } from '../ops/create.js';
import { reshape, splitLastDim, permute, contiguous } from '../ops/shape.js';
import { add, cast, mul, div, scale } from '../ops/elementwise.js';
import { sumAll, sumLastDim } from '../ops/reduce.js';
import { linear } from '../ops/linear.js';
import { rmsNorm } from '../ops/rms_norm.js';
import { rope } from '../ops/rope.js';
import { swiglu } from '../ops/swiglu.js';
import { embedding } from '../ops/embedding.js';
import { crossEntropyMean } from '../ops/cross_entropy.js';
import { softmax } from '../ops/softmax.js';
import { topk, bincount, expertOrder } from '../ops/routing.js';
import { gatherRows, scatterAddRows, splitRows, concatRows } from '../ops/rows.js';
import { mlaAttention } from '../ops/mla_attention.js';
import { Param } from '../nn/param.js';
import { normalValues } from '../nn/init.js';
import { ropeTables, yarnMscale } from '../nn/rope_tables.js';
import { isMoeLayer, parameterShapes, type DeepseekV2Config } from './deepseek_v2_config.js';

/** Which statistics the load-balance loss balances (DESIGN.md). */
export type LoadBalanceForm = 'micro-batch' | 'global-batch' | 'sequence';

export interface LoadBalance {
  form: LoadBalanceForm;
  /** Coefficient α; 0 disables the loss. */
  alpha: number;
}

export interface ForwardResult {
  /** Mean cross-entropy over labelled tokens, [1] f32. */
  crossEntropy: Tensor;
  /** Σ over MoE layers of the load-balance loss, [1] f32 (zeros when α = 0 or no MoE layer). */
  loadBalance: Tensor;
}

export class DeepseekV2 {
  readonly params: Param[] = [];
  private readonly byName = new Map<string, Param>();
  private readonly ropeCache = new Map<number, { cos: Tensor; sin: Tensor }>();
  readonly softmaxScale: number;
  /** Expert counts accumulated over the micro-batches of one step (global-batch form), per MoE layer. */
  private globalCounts = new Map<number, { counts: Tensor; slots: number }>();
  /** k as an i32 [1] tensor, uploaded once (token index of each routed slot). */
  private topK: Tensor | null = null;

  constructor(readonly config: DeepseekV2Config, readonly backend: Backend, readonly computeDtype: DType) {
    for (const { name, shape } of parameterShapes(config)) {
      // The router stays f32: its logits and softmax are computed in f32 (DESIGN.md numerics).
      const dtype = name.endsWith('.mlp.gate.weight') ? 'f32' : computeDtype;
      const p = new Param(name, shape, backend, dtype);
      this.params.push(p);
      this.byName.set(name, p);
    }
    const c = config;
    let sc = 1 / Math.sqrt(c.qk_nope_head_dim + c.qk_rope_head_dim);
    if (c.rope_scaling && c.rope_scaling.mscale_all_dim) {
      const m = yarnMscale(c.rope_scaling.factor, c.rope_scaling.mscale_all_dim);
      sc *= m * m;
    }
    this.softmaxScale = sc;
  }

  param(name: string): Param {
    const p = this.byName.get(name);
    if (!p) throw new Error(`internal: no parameter ${name}`);
    return p;
  }

  private w(name: string): Tensor { return this.param(name).value; }

  /** Initialisation of DESIGN.md: N(0, σ) matrices, σ/√(2·layers) for o_proj and down_proj, norms 1. */
  initialize(seed: number): void {
    const sigma = this.config.initializer_range;
    const residual = sigma / Math.sqrt(2 * this.config.num_hidden_layers);
    this.params.forEach((p, index) => {
      if (p.shape.length === 1) { p.load(new Float32Array(p.size).fill(1)); return; }
      const s = p.name.endsWith('o_proj.weight') || p.name.endsWith('down_proj.weight') ? residual : sigma;
      p.load(normalValues(p.size, s, seed, index));
    });
  }

  private rope(S: number): { cos: Tensor; sin: Tensor } {
    let t = this.ropeCache.get(S);
    if (!t) {
      const c = this.config;
      const { cos, sin } = ropeTables(S, c.qk_rope_head_dim, c.rope_theta, c.rope_scaling);
      const half = c.qk_rope_head_dim / 2;
      t = { cos: keep(fromHost(this.backend, cos, [S, half], 'f32')), sin: keep(fromHost(this.backend, sin, [S, half], 'f32')) };
      this.ropeCache.set(S, t);
    }
    return t;
  }

  /** Starts a training step: clears the global-batch expert counts. */
  beginStep(): void {
    for (const g of this.globalCounts.values()) g.counts.dispose();
    this.globalCounts.clear();
  }

  /**
   * Forward pass of one micro-batch: ids and labels i32 [B, S] (labels < 0 ignored);
   * labelCount = number of labels ≥ 0 (host-known, so no device read is needed).
   */
  forward(ids: Tensor, labels: Tensor, labelCount: number, lb: LoadBalance): ForwardResult {
    const [B, S] = ids.shape as [number, number];
    const { logits, lbParts } = this.run(ids, lb);
    const ce = crossEntropyMean(logits, reshape(labels, [B * S]), labelCount);
    let lbTotal: Tensor;
    if (lbParts.length === 0) lbTotal = fromHost(this.backend, [0], [1], 'f32');
    else { lbTotal = lbParts[0]!; for (let i = 1; i < lbParts.length; i++) lbTotal = add(lbTotal, lbParts[i]!); }
    return { crossEntropy: ce, loadBalance: lbTotal };
  }

  /** Next-token logits [B·S, V] for ids i32 [B, S] (evaluation and checkpoint parity checks). */
  logits(ids: Tensor): Tensor {
    return this.run(ids, { form: 'micro-batch', alpha: 0 }).logits;
  }

  private run(ids: Tensor, lb: LoadBalance): { logits: Tensor; lbParts: Tensor[] } {
    const [B, S] = ids.shape as [number, number];
    const c = this.config;
    let h = embedding(ids, this.w('model.embed_tokens.weight'));
    h = reshape(h, [B * S, c.hidden_size]);
    const lbParts: Tensor[] = [];
    for (let l = 0; l < c.num_hidden_layers; l++) {
      // Each layer in its own scope: only its output (and its share of the load-balance loss)
      // survives; the tensors its backward rules need are held by the autograd nodes.
      const prev = h;
      const r = tidy(() => this.layer(l, prev, B, S, lb));
      h = r.h;
      if (r.lb) lbParts.push(r.lb);
    }
    const normed = rmsNorm(h, this.w('model.norm.weight'), c.rms_norm_eps);
    return { logits: linear(normed, this.w('lm_head.weight')), lbParts };
  }

  private layer(l: number, x: Tensor, B: number, S: number, lb: LoadBalance): { h: Tensor; lb: Tensor | null } {
    const c = this.config, p = `model.layers.${l}`;
    const a = this.attention(p, rmsNorm(x, this.w(`${p}.input_layernorm.weight`), c.rms_norm_eps), B, S);
    const h = add(x, a);
    const normed = rmsNorm(h, this.w(`${p}.post_attention_layernorm.weight`), c.rms_norm_eps);
    if (!isMoeLayer(c, l)) return { h: add(h, this.mlp(`${p}.mlp`, normed)), lb: null };
    const moe = this.moe(l, p, normed, B, S, lb);
    return { h: add(h, moe.out), lb: moe.lb };
  }

  private attention(p: string, x: Tensor, B: number, S: number): Tensor {
    const c = this.config, H = c.num_attention_heads;
    const Dn = c.qk_nope_head_dim, Dr = c.qk_rope_head_dim, Dv = c.v_head_dim;
    const q = c.q_lora_rank === null
      ? linear(x, this.w(`${p}.self_attn.q_proj.weight`))
      : linear(rmsNorm(linear(x, this.w(`${p}.self_attn.q_a_proj.weight`)), this.w(`${p}.self_attn.q_a_layernorm.weight`), c.rms_norm_eps),
        this.w(`${p}.self_attn.q_b_proj.weight`));
    const [qNope, qPeRaw] = splitLastDim(reshape(q, [B, S, H, Dn + Dr]), [Dn, Dr]) as [Tensor, Tensor];
    const [ckv, kPeRaw] = splitLastDim(linear(x, this.w(`${p}.self_attn.kv_a_proj_with_mqa.weight`)), [c.kv_lora_rank, Dr]) as [Tensor, Tensor];
    const kv = linear(rmsNorm(ckv, this.w(`${p}.self_attn.kv_a_layernorm.weight`), c.rms_norm_eps), this.w(`${p}.self_attn.kv_b_proj.weight`));
    const [kNope, v] = splitLastDim(reshape(kv, [B, S, H, Dn + Dv]), [Dn, Dv]) as [Tensor, Tensor];
    const { cos, sin } = this.rope(S);
    const qPe = rope(qPeRaw, cos, sin);
    const kPe = rope(reshape(kPeRaw, [B, S, 1, Dr]), cos, sin);
    const { o } = mlaAttention(qNope, qPe, kNope, kPe, v, { causal: true, scale: this.softmaxScale });
    return linear(reshape(o, [B * S, H * Dv]), this.w(`${p}.self_attn.o_proj.weight`));
  }

  private mlp(p: string, x: Tensor): Tensor {
    const g = linear(x, this.w(`${p}.gate_proj.weight`)), u = linear(x, this.w(`${p}.up_proj.weight`));
    return linear(swiglu(g, u), this.w(`${p}.down_proj.weight`));
  }

  private moe(l: number, p: string, x: Tensor, B: number, S: number, lb: LoadBalance): { out: Tensor; lb: Tensor | null } {
    const c = this.config, N = B * S, E = c.n_routed_experts, k = c.num_experts_per_tok;
    const logits = linear(cast(x, 'f32'), this.w(`${p}.mlp.gate.weight`));
    const probs = softmax(logits);
    const { values, indices } = topk(probs, k);
    // DeepSeek-V2's rule (HF modeling_deepseek_v2): renormalise when norm_topk_prob and k > 1,
    // otherwise scale by routed_scaling_factor; never both.
    let weights = values;
    if (k > 1 && c.norm_topk_prob) weights = div(weights, add(reshape(sumLastDim(weights), [N, 1]), fromHost(this.backend, [1e-20], [1], 'f32')));
    else if (c.routed_scaling_factor !== 1) weights = scale(weights, c.routed_scaling_factor);

    const slots = indices.view([N * k], [1], indices.offset);
    const { order, offsets } = expertOrder(slots, E);
    const bounds = toHostI32(offsets); // one device read per MoE layer: the per-expert GEMM sizes
    const counts = Array.from({ length: E }, (_, e) => bounds[e + 1]! - bounds[e]!);
    // Slot m belongs to token floor(m/k): integer division by a broadcast [1] tensor holding k.
    this.topK ??= keep(fromHost(this.backend, [k], [1], 'i32'));
    const kView = this.topK.view([N * k], [0], this.topK.offset);
    const tokenOfSorted = emptyTensor(this.backend, order.shape, 'i32');
    this.backend.binary('div', tokenOfSorted, order, kView);
    kView.dispose();
    const sortedWeights = gatherRows(reshape(weights, [N * k, 1]), order, null);
    const xs = gatherRows(x, tokenOfSorted, null);
    const parts = splitRows(xs, counts);
    const ys = parts.map((part, e) => (counts[e]! > 0 ? this.mlp(`${p}.mlp.experts.${e}`, part) : part));
    let out = scatterAddRows(concatRows(ys), tokenOfSorted, sortedWeights, N);
    if (c.n_shared_experts > 0) out = add(out, this.mlp(`${p}.mlp.shared_experts`, x));
    const lbLoss = lb.alpha > 0 ? this.loadBalanceLoss(l, probs, slots, B, S, lb) : null;
    return { out, lb: lbLoss };
  }

  /** α·E·Σ_i f_i·P_i with f the fraction of routed slots per expert and P the mean router probability. */
  private loadBalanceLoss(l: number, probs: Tensor, slots: Tensor, B: number, S: number, lb: LoadBalance): Tensor {
    const c = this.config, E = c.n_routed_experts, k = c.num_experts_per_tok, N = B * S;
    if (lb.form === 'sequence') {
      const counts = bincount(slots.view([B, S * k], [S * k, 1], slots.offset), E);
      const f = scale(cast(counts, 'f32'), 1 / (S * k));
      const P = scale(sumLastDim(contiguous(permute(reshape(probs, [B, S, E]), [0, 2, 1]))), 1 / S); // [B, E]
      return scale(sumAll(mul(f, P)), lb.alpha * E / B);
    }
    const P = scale(sumLastDim(contiguous(permute(probs, [1, 0]))), 1 / N); // [E]
    const counts = cast(bincount(slots, E), 'f32');
    if (lb.form === 'micro-batch') return scale(sumAll(mul(scale(counts, 1 / (N * k)), P)), lb.alpha * E);
    // global-batch: counts accumulated over this step's micro-batches so far (and, with data or
    // expert parallelism, summed over those ranks by the caller before the next micro-batch).
    const prev = this.globalCounts.get(l);
    const total = keep(prev ? add(prev.counts, counts) : scale(counts, 1));
    const seen = (prev?.slots ?? 0) + N * k;
    prev?.counts.dispose();
    this.globalCounts.set(l, { counts: total, slots: seen });
    return scale(sumAll(mul(scale(total, 1 / seen), P)), lb.alpha * E);
  }

  dispose(): void {
    for (const p of this.params) p.dispose();
    for (const t of this.ropeCache.values()) { t.cos.dispose(); t.sin.dispose(); }
    this.topK?.dispose();
    this.beginStep();
  }
}

