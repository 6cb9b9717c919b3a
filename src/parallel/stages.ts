// Pipeline stages: which layers each of pp stages owns. The split balances training FLOPs, not
// layer counts: the first stage also holds the embedding lookup (almost free) and the last the
// final norm, lm_head and cross-entropy over the whole vocabulary, which for DeepSeek-V2-Lite
// costs as much as ~2.4 MoE layers; the dense first layer costs less than an MoE layer.
import { isMoeLayer, type DeepseekV2Config } from '../models/deepseek_v2_config.js';

/** Parameters of each kind in one decoder layer (matrices and norm vectors). */
export interface LayerParams {
  /** Attention, norms, router, dense MLP and shared experts: replicated over expert parallelism. */
  dense: number;
  /** Routed experts of the whole layer (all E of them). */
  experts: number;
}

export function layerParams(c: DeepseekV2Config, layer: number): LayerParams {
  const D = c.hidden_size, H = c.num_attention_heads, dq = c.qk_nope_head_dim + c.qk_rope_head_dim;
  const q = c.q_lora_rank === null ? H * dq * D : c.q_lora_rank * D + c.q_lora_rank + H * dq * c.q_lora_rank;
  const attn = q + (c.kv_lora_rank + c.qk_rope_head_dim) * D + c.kv_lora_rank
    + H * (c.qk_nope_head_dim + c.v_head_dim) * c.kv_lora_rank + D * H * c.v_head_dim;
  const norms = 2 * D;
  if (!isMoeLayer(c, layer)) return { dense: attn + norms + 3 * D * c.intermediate_size, experts: 0 };
  const shared = c.n_shared_experts * 3 * D * c.moe_intermediate_size;
  return { dense: attn + norms + c.n_routed_experts * D + shared, experts: c.n_routed_experts * 3 * D * c.moe_intermediate_size };
}

/** Training FLOPs per token of one decoder layer (TARGETS.md's count: 6 per matrix weight a token meets, plus attention). */
export function layerFlopsPerToken(c: DeepseekV2Config, layer: number, seqLen: number): number {
  const p = layerParams(c, layer);
  const active = p.dense + p.experts * c.num_experts_per_tok / c.n_routed_experts;
  return 6 * active + 3 * c.num_attention_heads * seqLen * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim);
}

/** FLOPs per token of the head: final norm, lm_head and cross-entropy. */
export function headFlopsPerToken(c: DeepseekV2Config): number {
  return 6 * c.vocab_size * c.hidden_size;
}

export interface Stage {
  /** Decoder layers [first, end). */
  first: number;
  end: number;
  /** Training FLOPs per token of this stage. */
  flopsPerToken: number;
}

/**
 * Splits the layers into pp contiguous stages with the largest stage cost as small as possible
 * (stage 0 adds nothing for the embedding; the last stage adds the head). `override` gives the
 * layer count of each stage explicitly (it must sum to the layer count).
 */
export function splitStages(c: DeepseekV2Config, pp: number, seqLen: number, override?: readonly number[]): Stage[] {
  const L = c.num_hidden_layers;
  if (!Number.isInteger(pp) || pp < 1) throw new Error(`parallel.pp must be a positive integer, got ${pp}`);
  if (pp > L) throw new Error(`parallel.pp (${pp}) exceeds the model's ${L} layers; each pipeline stage needs at least one layer`);
  const cost = Array.from({ length: L }, (_, l) => layerFlopsPerToken(c, l, seqLen));
  const head = headFlopsPerToken(c);
  const stageCost = (first: number, end: number, last: boolean) => {
    let s = last ? head : 0;
    for (let l = first; l < end; l++) s += cost[l]!;
    return s;
  };
  let counts: number[];
  if (override) {
    const sum = override.reduce((a, b) => a + b, 0);
    if (override.length !== pp || sum !== L || override.some((n) => !Number.isInteger(n) || n < 1)) {
      throw new Error(`parallel stage split [${override.join(', ')}] must have ${pp} positive layer counts that sum to ${L}`);
    }
    counts = [...override];
  } else {
    counts = balancedCounts(L, pp, (first, end, stage) => stageCost(first, end, stage === pp - 1));
  }
  const stages: Stage[] = [];
  let first = 0;
  counts.forEach((n, s) => {
    stages.push({ first, end: first + n, flopsPerToken: stageCost(first, first + n, s === pp - 1) });
    first += n;
  });
  return stages;
}

/** Layer counts per stage minimising the most expensive stage (exhaustive over boundaries by dynamic programming). */
function balancedCounts(L: number, pp: number, cost: (first: number, end: number, stage: number) => number): number[] {
  // best[s][e]: the smallest max-cost of splitting layers [0, e) into stages 0..s.
  const best = Array.from({ length: pp }, () => new Array<number>(L + 1).fill(Infinity));
  const from = Array.from({ length: pp }, () => new Array<number>(L + 1).fill(-1));
  for (let e = 1; e <= L; e++) best[0]![e] = cost(0, e, 0);
  for (let s = 1; s < pp; s++) {
    for (let e = s + 1; e <= L; e++) {
      for (let b = s; b < e; b++) {
        const v = Math.max(best[s - 1]![b]!, cost(b, e, s));
        if (v < best[s]![e]!) { best[s]![e] = v; from[s]![e] = b; }
      }
    }
  }
  const counts = new Array<number>(pp);
  let e = L;
  for (let s = pp - 1; s > 0; s--) { const b = from[s]![e]!; counts[s] = e - b; e = b; }
  counts[0] = e;
  return counts;
}
