// The typed parameter structure of DeepSeek-V2, built once from the config: embedding, decoder
// layers (attention, then a dense SwiGLU or an MoE block), final norm and lm_head. A model may
// be built for a part of the whole (a pipeline stage owns layers [first, end) and maybe the
// embedding or the head; an expert-parallel rank owns routed experts [first, end) of every MoE
// layer): the part's structure is the whole model's with the parts it does not own left out,
// and every parameter keeps its index in the whole model's order, which seeds its initial
// values, so a part initialises exactly like the same parameters of the whole model.
//
// The structure is generic over its leaves: DeepseekV2Weights<Param> is the model,
// DeepseekV2Weights<ParamSpec> describes it without allocating anything (sizes, FLOPs, the
// checkpoint names of deepseek_v2_names.ts).
import type { DeepseekV2Config } from './deepseek_v2_config.js';
import { isMoeLayer } from './deepseek_v2_config.js';

/** A SwiGLU: down(silu(gate·x) ⊙ up·x). */
export interface Mlp<T> {
  gate: T;
  up: T;
  down: T;
}

/** MLA attention's projections (DESIGN.md "The model"). */
export interface Attention<T> {
  /** The single query projection (q_lora_rank null); null with q-LoRA. */
  qProj: T | null;
  /** q-LoRA (q_lora_rank set): aProj → RMSNorm(aNorm) → bProj; null with a single qProj. */
  qLora: { aProj: T; aNorm: T; bProj: T } | null;
  /** x → compressed kv (kv_lora_rank) and the shared rotary key (qk_rope_head_dim). */
  kvAProj: T;
  kvANorm: T;
  /** Compressed kv → per-head k_nope and v. */
  kvBProj: T;
  oProj: T;
}

/** DeepSeekMoE: an f32 router over all routed experts, the experts this part owns, shared experts. */
export interface MoeBlock<T> {
  router: T;
  /** The owned routed experts: experts[i] is expert firstExpert + i of the whole model. */
  experts: Mlp<T>[];
  firstExpert: number;
  /** The n_shared_experts shared experts as one SwiGLU (null when there are none). */
  shared: Mlp<T> | null;
}

export interface DecoderLayer<T> {
  /** Index of this layer in the whole model. */
  index: number;
  inputNorm: T;
  attn: Attention<T>;
  postNorm: T;
  /** The dense SwiGLU (layers before first_k_dense_replace); null in MoE layers. */
  mlp: Mlp<T> | null;
  /** The MoE block; null in dense layers. */
  moe: MoeBlock<T> | null;
}

export interface DeepseekV2Weights<T> {
  /** Token embedding [V, D]; null when this part does not own it. */
  embed: T | null;
  /** The owned decoder layers, in order (layers[i].index is the global index). */
  layers: DecoderLayer<T>[];
  /** Final RMSNorm and lm_head [V, D]; null when this part does not own the head. */
  norm: T | null;
  lmHead: T | null;
}

/** What one parameter is, before any memory exists for it. */
export interface ParamSpec {
  shape: readonly number[];
  /** Position in the whole model's order (embedding, layers, norm, lm_head): its initialisation seed. */
  index: number;
  /** 'f32': computed in f32 whatever the run's precision (the router); 'compute': the run's precision. */
  dtype: 'f32' | 'compute';
  /**
   * Initial values: 'normal' N(0, initializer_range); 'residual' N(0, initializer_range/√(2·layers))
   * for the projections that write into the residual stream (o_proj, every SwiGLU's down); 'ones' (norms).
   */
  init: 'normal' | 'residual' | 'ones';
}

/** Which part of the whole model a DeepseekV2 instance holds. */
export interface ModelPart {
  /** Decoder layers [first, end) by global index. */
  layers: readonly [number, number];
  /** Routed experts [first, end) by global id, in every owned MoE layer. */
  experts: readonly [number, number];
  /** Owns the token embedding (a first pipeline stage). */
  embed: boolean;
  /** Owns the final norm and lm_head (a last pipeline stage). */
  head: boolean;
}

export function wholeModel(c: DeepseekV2Config): ModelPart {
  return { layers: [0, c.num_hidden_layers], experts: [0, c.n_routed_experts], embed: true, head: true };
}

function checkPart(c: DeepseekV2Config, part: ModelPart): void {
  const [l0, l1] = part.layers, [e0, e1] = part.experts;
  const ints = [l0, l1, e0, e1].every(Number.isInteger);
  if (!ints || l0 < 0 || l1 < l0 || l1 > c.num_hidden_layers) {
    throw new Error(`model part: layers [${l0}, ${l1}) is not a range of the model's ${c.num_hidden_layers} layers; give 0 ≤ first ≤ end ≤ ${c.num_hidden_layers}`);
  }
  if (!ints || e0 < 0 || e1 <= e0 || e1 > c.n_routed_experts) {
    throw new Error(`model part: experts [${e0}, ${e1}) is not a non-empty range of the model's ${c.n_routed_experts} routed experts; give 0 ≤ first < end ≤ ${c.n_routed_experts}`);
  }
}

/** The whole model's specs, created in the model's order so that `index` counts up from 0. */
function wholeSpecs(c: DeepseekV2Config): DeepseekV2Weights<ParamSpec> {
  let index = 0;
  const spec = (shape: number[], init: ParamSpec['init'] = 'normal', dtype: ParamSpec['dtype'] = 'compute'): ParamSpec =>
    ({ shape, index: index++, dtype, init });
  const D = c.hidden_size, H = c.num_attention_heads, dq = c.qk_nope_head_dim + c.qk_rope_head_dim;
  const mlp = (width: number): Mlp<ParamSpec> => ({ gate: spec([width, D]), up: spec([width, D]), down: spec([D, width], 'residual') });
  const embed = spec([c.vocab_size, D]);
  const layers = Array.from({ length: c.num_hidden_layers }, (_, l): DecoderLayer<ParamSpec> => {
    const inputNorm = spec([D], 'ones');
    const qProj = c.q_lora_rank === null ? spec([H * dq, D]) : null;
    const qLora = c.q_lora_rank === null ? null
      : { aProj: spec([c.q_lora_rank, D]), aNorm: spec([c.q_lora_rank], 'ones'), bProj: spec([H * dq, c.q_lora_rank]) };
    const attn: Attention<ParamSpec> = {
      qProj, qLora,
      kvAProj: spec([c.kv_lora_rank + c.qk_rope_head_dim, D]),
      kvANorm: spec([c.kv_lora_rank], 'ones'),
      kvBProj: spec([H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank]),
      oProj: spec([D, H * c.v_head_dim], 'residual'),
    };
    const postNorm = spec([D], 'ones');
    if (!isMoeLayer(c, l)) return { index: l, inputNorm, attn, postNorm, mlp: mlp(c.intermediate_size), moe: null };
    const router = spec([c.n_routed_experts, D], 'normal', 'f32');
    const experts = Array.from({ length: c.n_routed_experts }, () => mlp(c.moe_intermediate_size));
    const shared = c.n_shared_experts > 0 ? mlp(c.moe_intermediate_size * c.n_shared_experts) : null;
    return { index: l, inputNorm, attn, postNorm, mlp: null, moe: { router, experts, firstExpert: 0, shared } };
  });
  const norm = spec([D], 'ones');
  const lmHead = spec([c.vocab_size, D]);
  return { embed, layers, norm, lmHead };
}

/**
 * The structure of `part` with each owned parameter made by `make`, called once per parameter
 * in the model's order.
 */
export function buildWeights<T>(c: DeepseekV2Config, part: ModelPart, make: (spec: ParamSpec) => T): DeepseekV2Weights<T> {
  checkPart(c, part);
  const whole = wholeSpecs(c);
  const mlp = (m: Mlp<ParamSpec>): Mlp<T> => ({ gate: make(m.gate), up: make(m.up), down: make(m.down) });
  const [e0, e1] = part.experts;
  // Object literals evaluate their fields in the order written: that order is the model's order.
  const embed = part.embed ? make(whole.embed!) : null;
  const layers = whole.layers.slice(part.layers[0], part.layers[1]).map((l): DecoderLayer<T> => {
    const a = l.attn;
    return {
      index: l.index,
      inputNorm: make(l.inputNorm),
      attn: {
        qProj: a.qProj && make(a.qProj),
        qLora: a.qLora && { aProj: make(a.qLora.aProj), aNorm: make(a.qLora.aNorm), bProj: make(a.qLora.bProj) },
        kvAProj: make(a.kvAProj), kvANorm: make(a.kvANorm), kvBProj: make(a.kvBProj), oProj: make(a.oProj),
      },
      postNorm: make(l.postNorm),
      mlp: l.mlp && mlp(l.mlp),
      moe: l.moe && {
        router: make(l.moe.router),
        experts: l.moe.experts.slice(e0, e1).map(mlp),
        firstExpert: e0,
        shared: l.moe.shared && mlp(l.moe.shared),
      },
    };
  });
  const norm = part.head ? make(whole.norm!) : null;
  const lmHead = part.head ? make(whole.lmHead!) : null;
  return { embed, layers, norm, lmHead };
}

const numel = (s: ParamSpec): number => s.shape.reduce((a, b) => a * b, 1);

/** Parameters in `part` (default: the whole model). */
export function parameterCount(c: DeepseekV2Config, part: ModelPart = wholeModel(c)): number {
  let n = 0;
  buildWeights(c, part, (s) => { n += numel(s); return s; });
  return n;
}

/**
 * Training FLOPs per token (TARGETS.md): 6 × (matrix parameters a token passes through,
 * lm_head included, embedding excluded, routed experts counted k/E each) + 3·h·s·(dq+dv) per
 * layer for causal attention at sequence length s.
 */
export function flopsPerToken(c: DeepseekV2Config, seqLen: number): number {
  const w = buildWeights(c, wholeModel(c), (s) => s);
  const mlp = (m: Mlp<ParamSpec>) => numel(m.gate) + numel(m.up) + numel(m.down);
  let matrix = numel(w.lmHead!);
  for (const l of w.layers) {
    const a = l.attn;
    matrix += (a.qProj ? numel(a.qProj) : numel(a.qLora!.aProj) + numel(a.qLora!.bProj)) + numel(a.kvAProj) + numel(a.kvBProj) + numel(a.oProj);
    if (l.mlp) matrix += mlp(l.mlp);
    if (l.moe) {
      matrix += numel(l.moe.router) + (l.moe.shared ? mlp(l.moe.shared) : 0);
      for (const e of l.moe.experts) matrix += (mlp(e) * c.num_experts_per_tok) / c.n_routed_experts;
    }
  }
  const attn = 3 * c.num_attention_heads * seqLen * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim) * c.num_hidden_layers;
  return 6 * matrix + attn;
}
