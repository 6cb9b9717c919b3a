// Per-rank memory estimate for a mesh (pp, dp, cp, ep): persistent state (sharded master
// weights, compute copy, gradients, Adam moments) and the peak on top of it (gathered weights,
// activations kept for backward, the working set of the busiest layer or of the head,
// workspace). It follows what the code allocates:
// - every parameter is sharded over dp·cp·ep (dense) or dp·cp (routed experts, of which each
//   expert-parallel rank holds E/ep); one rank alone holds everything unsharded;
// - f32 master (4 B), bf16 compute copy (2 B; none in f32 compute nor for the f32 router), f32
//   gradient (4 B) and two f32 moments (8 B) per held parameter: 18 B in the default recipe. A
//   single process carves all of them from slabs (nn/param_arena.ts), so no block is rounded;
//   in the lean recipe (optim/recipe.ts; one rank only) bf16 weights (2 B), bf16 moments (4 B)
//   and a bf16 gradient (2 B) where one pass writes it once per step (a matmul, the embedding's
//   rows), f32 (4 B) under accumulation: 8 B per matrix parameter; the f32 router (16 B) and the
//   norm gains (18 B) keep the default's state (recipe.ts leanKeepsMaster);
// - with sharding, a layer's bf16 weights are gathered before use (the next layer's gather is
//   issued early, so two layers are whole at once) and its f32 gradients are whole from its
//   backward until its reduce-scatter, which overlaps the previous unit's backward, is finished
//   (so two neighbouring units' gradients are whole at once); with parallel.hold_weights every
//   unit of the stage stays gathered until the step's end (the held weights replace the two gathered layers), and
//   with parallel.hold_grads every unit's f32 gradient stays whole over the micro-batches (the
//   held gradients replace the two units'): all of them are resident at the peak;
// - the activations a layer keeps for backward, counted tensor by tensor from the model's ops
//   (models/deepseek_v2.ts; with recompute cheap, the default, SwiGLU outputs, the MoE's gathered
//   rows and the router's f32 input copy are recomputed in backward, autograd/recompute.ts, and
//   cost nothing between; with copies the SwiGLU outputs are kept; with none all are kept; with layers a layer keeps only its input, and
//   its whole activations exist again while its backward runs, autograd/rerun.ts), for every
//   micro-batch in flight on the stage (1F1B: pp − s on stage s);
// - on top of those, the working set of one layer's forward (the largest: an MoE layer's routed
//   rows, expert activations and outputs at their concatenation; with cp > 1 the attention's
//   also holds the ring's k/v of every cp rank) or of the head (one chunk of
//   logits, ops/linear_cross_entropy.ts), whichever is larger;
// - on the GPU, the caching allocator rounds tensors over 1 MiB up to 2 MiB, which matters
//   for the many per-expert tensors.
import { isMoeLayer, type DeepseekV2Config } from '../models/deepseek_v2_config.js';
import { linearCrossEntropyChunkRows } from '../ops/linear_cross_entropy.js';
import type { Recipe } from '../optim/recipe.js';
import { recomputedKinds, type RecomputeMode } from '../models/deepseek_v2.js';
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
  /** parallel.hold_weights: every sharded unit's gathered weights resident for the whole step. */
  holdWeights?: boolean;
  /** parallel.hold_grads: every sharded unit's full f32 gradient resident for the whole step. */
  holdGrads?: boolean;
  /** keep_logits: the head keeps each micro-batch's whole logits from its forward to its backward. */
  keepLogits?: boolean;
  /** The train option recompute (default 'cheap'). */
  recompute?: RecomputeMode;
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
    /** The two layers (or the head) gathered at once; 0 with hold_weights (heldWeights holds them). */
    gatheredWeights: number;
    /** Two neighbouring units' whole f32 gradients (one being reduced); 0 with hold_grads (heldGradients holds them). */
    layerGradients: number;
    /** hold_weights: every sharded unit of the stage gathered (compute dtype; the router f32). */
    heldWeights: number;
    /** hold_grads: every sharded unit's whole f32 gradient. */
    heldGradients: number;
    /** Saved for backward over the micro-batches in flight, plus the busiest layer's forward working set. */
    activations: number;
    /** What the head's working set (a chunk of logits, its input and gradient) adds beyond that layer's. */
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
 * Bytes one layer keeps for backward per micro-batch of T tokens (this rank's tokens), e the
 * compute element size, and the working set its forward holds on top of them at its busiest
 * point. The routed experts' tensors hold all local experts' rows at once (one grouped product
 * per projection), `rowsPerExpert` rows for each expert on balanced routing.
 */
function layerActivationBytes(c: DeepseekV2Config, layer: number, T: number, e: number, localExperts: number, rowsPerExpert: number, device: 'cuda' | 'cpu',
                              keep: { swiglu: boolean; copies: boolean }, cp: number): { saved: number; working: number } {
  const D = c.hidden_size, H = c.num_attention_heads, Dn = c.qk_nope_head_dim, Dr = c.qk_rope_head_dim, Dv = c.v_head_dim, C = c.kv_lora_rank;
  const r = (elements: number, size = e) => rounded(elements * size, device);
  // Attention: the layer input and its norm (rstd, output), q-LoRA's pair, q (whole: q_nope is a
  // view of it) and the rotated q_pe, the compressed kv and its norm, kv (k_nope and v are views
  // of it), the rotated k_pe, the attention output and lse; then the residual sum and the
  // post-attention norm.
  let saved = r(T * D) + r(T, 4) + r(T * D);
  if (c.q_lora_rank !== null) saved += r(T * c.q_lora_rank) * 2 + r(T, 4);
  saved += r(T * H * (Dn + Dr)) + r(T * H * Dr) + r(T * C) * 2 + r(T, 4) + r(T * H * (Dn + Dv)) + r(T * Dr) + r(T * H * Dv) + r(T * H, 4);
  saved += r(T * D) + r(T, 4) + r(T * D);
  // The attention's working set: the kv_a output, the unrotated q_pe and k_pe, o_proj's output;
  // with cp > 1 also the ring's slots, every cp rank's k_nope, k_pe and v (ring_attention.ts).
  const ringSlots = cp > 1 ? r(cp * T * (H * (Dn + Dv) + Dr)) : 0;
  const attnWorking = r(T * (C + Dr)) + r(T * H * Dr) + r(T * Dr) + r(T * D) + ringSlots;
  if (!isMoeLayer(c, layer)) {
    // Gate and up (and the SwiGLU output unless recomputed); working: the SwiGLU output and down's output.
    const I = c.intermediate_size;
    return { saved: saved + r(T * I) * (keep.swiglu ? 3 : 2), working: Math.max(attnWorking, r(T * I) + r(T * D)) };
  }
  const k = c.num_experts_per_tok, F = c.moe_intermediate_size, E = c.n_routed_experts;
  const slots = rowsPerExpert * localExperts;
  // Router probabilities, top-k positions, the slots' order, token, weight and row (the order's
  // inverse, ops/expert_rows.ts); the experts' gate and up; their down output (the router
  // weights' gradient reads it); the shared experts' gate and up.
  saved += r(T * E, 4) + r(T * k, 4) * 5 + r(slots * F) * 2 + r(slots * D);
  if (c.n_shared_experts > 0) saved += r(T * F * c.n_shared_experts) * (keep.swiglu ? 3 : 2);
  // recompute copies / none: the experts' SwiGLU output; none: the router's f32 input and the gathered rows too.
  if (keep.swiglu) saved += r(slots * F);
  if (keep.copies) saved += r(T * D, 4) + r(slots * D);
  // Working set at the experts' down product: the router's f32 input and logits, the gathered
  // rows, the SwiGLU output and the down output.
  const moeWorking = r(T * D, 4) + r(T * E, 4) + r(slots * D) + r(slots * F) + r(slots * D);
  return { saved, working: Math.max(attnWorking, moeWorking) };
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
  // Elements of layer l that are sharded over more than one rank (gathered, with whole gradients for a while).
  const localOf = (l: number): number => {
    const p = layerParams(c, l);
    return (denseGroup > 1 ? p.dense : 0) + (expertGroup > 1 ? p.experts / mesh.ep : 0);
  };
  return stages.map((st, s) => {
    const last = s === stages.length - 1;
    let dense = (s === 0 ? V * D : 0) + (last ? V * D + D : 0), experts = 0, largestPair = 0, prev = 0, router = 0;
    // Elements of every unit that is gathered (sharded over more than one rank), and of those the f32 router's.
    let gatheredUnits = denseGroup > 1 ? (s === 0 ? V * D : 0) + (last ? V * D + D : 0) : 0, gatheredRouter = 0;
    // The lean recipe keeps f32 gradients for the norms, and the norms' masters and f32 moments
    // (see the header).
    let norms = last ? D : 0;
    for (let l = st.first; l < st.end; l++) {
      norms += 2 * D + c.kv_lora_rank + (c.q_lora_rank ?? 0);
      const p = layerParams(c, l);
      dense += p.dense;
      if (isMoeLayer(c, l)) router += c.n_routed_experts * D;
      experts += p.experts;
      // Only sharded parameters are gathered (and have whole gradients for a while).
      const local = localOf(l);
      gatheredUnits += local;
      if (denseGroup > 1 && isMoeLayer(c, l)) gatheredRouter += c.n_routed_experts * D;
      largestPair = Math.max(largestPair, local + prev);
      prev = local;
    }
    const held = dense / denseGroup + experts / mesh.ep / expertGroup;
    let masterWeights = 4 * held;
    // The router stays f32: it has no separate compute copy.
    let computeWeights = precision === 'bf16' ? 2 * (held - router / denseGroup) : 0;
    let gradients = 4 * held, moments = 8 * held;
    if (recipe === 'lean') {
      // One rank: held counts every parameter. The f32 router and the norm gains are updated as in
      // the default recipe.
      const bf16Grads = microBatches === 1 ? held - router - norms : 0;
      masterWeights = 4 * (router + norms);
      computeWeights = 2 * (held - router);
      gradients = 2 * bf16Grads + 4 * (held - bf16Grads);
      moments = 4 * (held - router - norms) + 8 * (router + norms);
    }
    const head = last && denseGroup > 1 ? V * D : 0;
    const holdWeights = input.holdWeights ?? false, holdGrads = input.holdGrads ?? false;
    const gatheredWeights = holdWeights ? 0 : e * Math.max(largestPair, head);
    // Two neighbouring units' gradients: a pair of layers, the head with the stage's last layer, or
    // the embedding with its first (their reductions overlap the next unit's backward).
    const firstLocal = st.end > st.first ? localOf(st.first) : 0, lastLocal = st.end > st.first ? localOf(st.end - 1) : 0;
    const embed = s === 0 && denseGroup > 1 ? V * D : 0;
    const layerGradients = holdGrads ? 0 : 4 * Math.max(largestPair, head + lastLocal, embed + firstLocal);
    // The router is f32 in either precision (it has no compute copy).
    const heldWeights = holdWeights ? e * (gatheredUnits - gatheredRouter) + 4 * gatheredRouter : 0;
    const heldGradients = holdGrads ? 4 * gatheredUnits : 0;
    const inFlight = Math.min(mesh.pp - s, microBatches);
    const recompute = input.recompute ?? 'cheap', kinds = recomputedKinds(recompute);
    const keep = { swiglu: !kinds.includes('compute'), copies: !kinds.includes('copy') };
    let perMicro = 0, working = 0;
    for (let l = st.first; l < st.end; l++) {
      const a = layerActivationBytes(c, l, T, e, localExperts, rowsPerExpert, device, keep, mesh.cp);
      // layers: only the layer's input is kept; its activations return while its backward runs.
      perMicro += recompute === 'layers' ? rounded(T * D * e, device) : a.saved;
      working = Math.max(working, recompute === 'layers' ? a.saved + a.working : a.working);
    }
    if (mesh.ep > 1) perMicro += (st.end - st.first) * 2 * rounded(T * c.num_experts_per_tok * D * e, device);
    const activations = inFlight * perMicro + working;
    // The head: its normed input (saved), one chunk of logits (reused in place for their
    // gradient), the rows' loss and lse, and in backward its input's gradient. keep_logits: the
    // chunk is the whole micro-batch, one per micro-batch in flight on the stage.
    const keepLogits = input.keepLogits ?? false;
    const R = keepLogits ? T : Math.min(T, linearCrossEntropyChunkRows(V, e));
    const headWorking = !last ? 0 : (keepLogits ? inFlight : 1) * rounded(R * V * e, device) + 2 * rounded(T * 4, device) +
      2 * rounded(T * D * e, device) + rounded(T * 4, device);
    const logits = Math.max(0, headWorking - working);
    const workspace = device === 'cuda' ? CUBLASLT_WORKSPACE : 0;
    const persistentBytes = masterWeights + computeWeights + gradients + moments;
    return {
      stage: s, layers: [st.first, st.end], heldParams: held,
      parts: { masterWeights, computeWeights, gradients, moments, gatheredWeights, layerGradients, heldWeights, heldGradients, activations, logits, workspace },
      persistentBytes,
      peakBytes: persistentBytes + gatheredWeights + layerGradients + heldWeights + heldGradients + activations + logits + workspace,
    };
  });
}

/** A readable table of the estimate, one row per pipeline stage (every rank of a stage holds the same). */
export function formatEstimate(rows: readonly RankEstimate[], mesh: MeshSizes): string {
  const gib = (b: number) => (b / 2 ** 30).toFixed(2);
  const lines = [`memory estimate per rank, mesh pp${mesh.pp}·dp${mesh.dp}·cp${mesh.cp}·ep${mesh.ep} (GiB):`,
    'stage  layers   params(B)  master  bf16   grads  moments | gathered  layer-grads  held-weights  held-grads  activations  logits  workspace | persistent  peak'];
  for (const r of rows) {
    const p = r.parts;
    lines.push(`${String(r.stage).padStart(5)}  ${`${r.layers[0]}-${r.layers[1] - 1}`.padEnd(7)}  ${(r.heldParams / 1e9).toFixed(3).padStart(9)}  ` +
      `${gib(p.masterWeights).padStart(6)}  ${gib(p.computeWeights).padStart(5)}  ${gib(p.gradients).padStart(5)}  ${gib(p.moments).padStart(7)} | ` +
      `${gib(p.gatheredWeights).padStart(8)}  ${gib(p.layerGradients).padStart(11)}  ${gib(p.heldWeights).padStart(12)}  ${gib(p.heldGradients).padStart(10)}  ` +
      `${gib(p.activations).padStart(11)}  ${gib(p.logits).padStart(6)}  ` +
      `${gib(p.workspace).padStart(9)} | ${gib(r.persistentBytes).padStart(10)}  ${gib(r.peakBytes).padStart(5)}`);
  }
  const worst = rows.reduce((a, b) => (b.peakBytes > a.peakBytes ? b : a));
  lines.push(`largest peak: ${gib(worst.peakBytes)} GiB on stage ${worst.stage}; persistent ${(worst.persistentBytes / worst.heldParams).toFixed(1)} bytes per held parameter`);
  return lines.join('\n');
}
