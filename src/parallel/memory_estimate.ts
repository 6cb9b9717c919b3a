// Per-rank memory estimate for a mesh (pp, dp, cp, ep): persistent state (sharded master
// weights, compute copy, gradients, Adam moments) and the peak on top of it (gathered weights,
// activations kept for backward, logits, workspace). It follows what the code allocates:
// - every parameter is sharded over dp·cp·ep (dense) or dp·cp (routed experts, of which each
//   expert-parallel rank holds E/ep); one rank alone holds everything unsharded;
// - f32 master (4 B), bf16 compute copy (2 B; none in f32 compute nor for the f32 router), f32
//   gradient (4 B) and two f32 moments (8 B) per held parameter: 18 B in the default recipe;
//   in the lean recipe (optim/recipe.ts; one rank only) bf16 weights (2 B), bf16 moments (4 B)
//   and a bf16 gradient (2 B) where a matmul writes it once per step, f32 (4 B) for the
//   embedding, the norms and under accumulation: 8 B per matrix parameter; the f32 router keeps
//   the default's f32 state (16 B);
// - with sharding, a layer's bf16 weights are gathered before use (the next layer's gather is
//   issued early, so two layers are whole at once) and its f32 gradients are whole from its
//   backward until they are reduce-scattered;
// - the activations a layer keeps for backward, counted tensor by tensor from the model's ops
//   (models/deepseek_v2.ts), for every micro-batch in flight on the stage (1F1B: pp − s on
//   stage s);
// - on the last stage, bf16 logits and their gradient over the whole vocabulary;
// - on the GPU, the caching allocator rounds tensors over 1 MiB up to 2 MiB, which matters
//   for the many per-expert tensors.
import { isMoeLayer, type DeepseekV2Config } from '../models/deepseek_v2_config.js';
import type { Recipe } from '../optim/recipe.js';
import { layerParams, splitStages, type Stage } from './stages.js';

export interface MeshSizes { pp: number; dp: number; cp: number; ep: number }

export interface EstimateInput {
  model: DeepseekV2Config;
  mesh: MeshSizes;
  seqLen: number;
  microBatchSize: number;
  /** Micro-batches per optimizer step on one data-parallel rank (bounds the 1F1B in-flight count). */
  microBatches: number;
  precision: 'bf16' | 'f32';
  /** The training recipe (default "default"); "lean" needs bf16 and a single rank. */
  recipe?: Recipe;
  /** 'cuda' rounds allocations like the caching allocator; 'cpu' counts bytes exactly. */
  device: 'cuda' | 'cpu';
}

export interface RankEstimate {
  stage: number;
  layers: [number, number];
  /** Parameters this rank holds a shard of (its share of the stage's parameters). */
  heldParams: number;
  parts: {
    masterWeights: number;
    computeWeights: number;
    gradients: number;
    moments: number;
    gatheredWeights: number;
    layerGradients: number;
    activations: number;
    logits: number;
    workspace: number;
  };
  persistentBytes: number;
  peakBytes: number;
}

const CUBLASLT_WORKSPACE = 32 << 20;

/** The capacity the GPU allocator hands out for a request (allocator.ts's size classes). */
function rounded(bytes: number, device: 'cuda' | 'cpu'): number {
  if (device === 'cpu' || bytes <= 0) return Math.max(bytes, 0);
  if (bytes <= 1 << 20) return Math.ceil(bytes / 512) * 512;
  return Math.ceil(bytes / (2 << 20)) * (2 << 20);
}

/**
 * Activation bytes one layer keeps for backward per micro-batch of T tokens (this rank's
 * tokens), e the compute element size. Routed-expert tensors are per local expert with
 * `rowsPerExpert` rows each.
 */
function layerActivationBytes(c: DeepseekV2Config, layer: number, T: number, e: number, localExperts: number, rowsPerExpert: number, device: 'cuda' | 'cpu'): number {
  const D = c.hidden_size, H = c.num_attention_heads, Dn = c.qk_nope_head_dim, Dr = c.qk_rope_head_dim, Dv = c.v_head_dim;
  const r = (elements: number, size = e) => rounded(elements * size, device);
  // Attention: input norm (output, rstd), q (or q-LoRA's two), compressed kv and its norm,
  // kv_b output, rotated q_pe/k_pe, attention output and lse, o_proj output, the residual sum
  // and the post-attention norm (output, rstd).
  let bytes = r(T * D) + r(T, 4);
  bytes += c.q_lora_rank === null ? r(T * H * (Dn + Dr)) : r(T * c.q_lora_rank) * 2 + r(T, 4) + r(T * H * (Dn + Dr));
  bytes += r(T * (c.kv_lora_rank + Dr)) + r(T * c.kv_lora_rank) + r(T, 4) + r(T * H * (Dn + Dv));
  bytes += r(T * H * Dr) + r(T * Dr) + r(T * H * Dv) + r(T * H, 4);
  bytes += r(T * D) * 2 + r(T * D) + r(T, 4);
  if (!isMoeLayer(c, layer)) return bytes + r(T * c.intermediate_size) * 3 + r(T * D);
  const k = c.num_experts_per_tok, F = c.moe_intermediate_size, E = c.n_routed_experts;
  // Router in f32 (input copy, logits, probabilities, top-k), the gathered rows, per local
  // expert gate/up/activation, the combined rows, and the shared experts.
  bytes += r(T * D, 4) + r(T * E, 4) * 2 + r(T * k, 4) * 3;
  const slots = rowsPerExpert * localExperts;
  bytes += r(slots * D) + localExperts * r(rowsPerExpert * F) * 3 + r(slots * D);
  if (c.n_shared_experts > 0) bytes += r(T * F * c.n_shared_experts) * 3;
  return bytes + r(T * D);
}

export function estimateMemory(input: EstimateInput): RankEstimate[] {
  const { model: c, mesh, seqLen, microBatchSize, microBatches, precision, device } = input;
  const recipe = input.recipe ?? 'default';
  if (recipe === 'lean' && (precision !== 'bf16' || mesh.pp * mesh.dp * mesh.cp * mesh.ep !== 1)) {
    throw new Error(`the lean recipe runs on one rank in bf16 (got ${precision}, mesh pp${mesh.pp}·dp${mesh.dp}·cp${mesh.cp}·ep${mesh.ep}); estimate it with --precision bf16 and a 1×1×1×1 mesh, or use --recipe default`);
  }
  const stages: Stage[] = splitStages(c, mesh.pp, seqLen);
  const denseGroup = mesh.dp * mesh.cp * mesh.ep, expertGroup = mesh.dp * mesh.cp;
  const e = precision === 'bf16' ? 2 : 4;
  const T = microBatchSize * seqLen / mesh.cp;
  const V = c.vocab_size, D = c.hidden_size;
  const localExperts = c.n_routed_experts / mesh.ep;
  // Each rank of an expert-parallel group receives, on balanced routing, as many slots as it sends.
  const rowsPerExpert = Math.ceil(T * c.num_experts_per_tok / localExperts);
  return stages.map((st, s) => {
    const last = s === stages.length - 1;
    let dense = (s === 0 ? V * D : 0) + (last ? V * D + D : 0), experts = 0, largestLayer = 0, largestPair = 0, prev = 0, router = 0;
    // The lean recipe keeps f32 gradients for the embedding and the norms (see the header).
    let f32Grads = (s === 0 ? V * D : 0) + (last ? D : 0);
    for (let l = st.first; l < st.end; l++) {
      f32Grads += 2 * D + c.kv_lora_rank + (c.q_lora_rank ?? 0);
      const p = layerParams(c, l);
      dense += p.dense;
      if (isMoeLayer(c, l)) router += c.n_routed_experts * D;
      experts += p.experts;
      // Only sharded parameters are gathered (and have whole gradients for a while).
      const local = (denseGroup > 1 ? p.dense : 0) + (expertGroup > 1 ? p.experts / mesh.ep : 0);
      largestLayer = Math.max(largestLayer, local);
      largestPair = Math.max(largestPair, local + prev);
      prev = local;
    }
    const held = dense / denseGroup + experts / mesh.ep / expertGroup;
    let masterWeights = 4 * held;
    // The router stays f32: it has no separate compute copy.
    let computeWeights = precision === 'bf16' ? 2 * (held - router / denseGroup) : 0;
    let gradients = 4 * held, moments = 8 * held;
    if (recipe === 'lean') {
      // One rank: held counts every parameter. The f32 router is updated as in the default recipe.
      const bf16Grads = microBatches === 1 ? held - router - f32Grads : 0;
      masterWeights = 4 * router;
      computeWeights = 2 * (held - router);
      gradients = 2 * bf16Grads + 4 * (held - bf16Grads);
      moments = 4 * (held - router) + 8 * router;
    }
    const head = last && denseGroup > 1 ? V * D : 0;
    const gatheredWeights = e * Math.max(largestPair, head);
    const layerGradients = 4 * Math.max(largestLayer, head);
    const inFlight = Math.min(mesh.pp - s, microBatches);
    let perMicro = s === 0 ? rounded(T * D * e, device) : 0;
    for (let l = st.first; l < st.end; l++) perMicro += layerActivationBytes(c, l, T, e, localExperts, rowsPerExpert, device);
    if (mesh.ep > 1) perMicro += (st.end - st.first) * 2 * rounded(T * c.num_experts_per_tok * D * e, device);
    const activations = inFlight * perMicro;
    const logits = last ? 2 * rounded(T * V * e, device) + rounded(T * D * e, device) : 0;
    const workspace = device === 'cuda' ? CUBLASLT_WORKSPACE : 0;
    const persistentBytes = masterWeights + computeWeights + gradients + moments;
    return {
      stage: s, layers: [st.first, st.end], heldParams: held,
      parts: { masterWeights, computeWeights, gradients, moments, gatheredWeights, layerGradients, activations, logits, workspace },
      persistentBytes,
      peakBytes: persistentBytes + gatheredWeights + layerGradients + activations + logits + workspace,
    };
  });
}

/** A readable table of the estimate, one row per pipeline stage (every rank of a stage holds the same). */
export function formatEstimate(rows: readonly RankEstimate[], mesh: MeshSizes): string {
  const gib = (b: number) => (b / 2 ** 30).toFixed(2);
  const lines = [`memory estimate per rank, mesh pp${mesh.pp}·dp${mesh.dp}·cp${mesh.cp}·ep${mesh.ep} (GiB):`,
    'stage  layers   params(B)  master  bf16   grads  moments | gathered  layer-grads  activations  logits  workspace | persistent  peak'];
  for (const r of rows) {
    const p = r.parts;
    lines.push(`${String(r.stage).padStart(5)}  ${`${r.layers[0]}-${r.layers[1] - 1}`.padEnd(7)}  ${(r.heldParams / 1e9).toFixed(3).padStart(9)}  ` +
      `${gib(p.masterWeights).padStart(6)}  ${gib(p.computeWeights).padStart(5)}  ${gib(p.gradients).padStart(5)}  ${gib(p.moments).padStart(7)} | ` +
      `${gib(p.gatheredWeights).padStart(8)}  ${gib(p.layerGradients).padStart(11)}  ${gib(p.activations).padStart(11)}  ${gib(p.logits).padStart(6)}  ` +
      `${gib(p.workspace).padStart(9)} | ${gib(r.persistentBytes).padStart(10)}  ${gib(r.peakBytes).padStart(5)}`);
  }
  const worst = rows.reduce((a, b) => (b.peakBytes > a.peakBytes ? b : a));
  lines.push(`largest peak: ${gib(worst.peakBytes)} GiB on stage ${worst.stage}; persistent ${(worst.persistentBytes / worst.heldParams).toFixed(1)} bytes per held parameter`);
  return lines.join('\n');
}
