// The Backend contract. Every numeric operation moetrain runs is a method here; the op layer
// (src/ops) allocates outputs, checks shapes and records gradients, then calls these methods,
// so op logic is written once and each backend only supplies arithmetic.
//
// Conventions for every method:
// - Outputs come first and are preallocated by the caller, contiguous unless stated.
// - Inputs are contiguous unless the parameter says "view" (then shape/strides/offset are
//   honoured; a stride of 0 broadcasts).
// - Accumulation and statistics are f32 whatever the storage dtype; bf16 results are rounded
//   to nearest even once, on store.
// - Shapes in names: R rows, C columns, N tokens, E experts, k top-k, B batch, S sequence,
//   H heads, D head or hidden width, V vocabulary.
import type { HostArray } from '../tensor/dtype.js';
import type { DeviceBuffer, StorageOwner } from '../tensor/storage.js';
import type { Tensor } from '../tensor/tensor.js';
import type { AdamSlot, LeanAdamSlot, TensorList } from './tensor_list.js';

export type { DeviceBuffer } from '../tensor/storage.js';

export type UnaryOp = 'neg' | 'exp' | 'log' | 'sqrt' | 'rsqrt' | 'square' | 'silu' | 'scale' | 'addScalar';
export type BinaryOp = 'add' | 'sub' | 'mul' | 'div';

export interface MemoryStats {
  /** Bytes held by live tensors. */
  liveBytes: number;
  /** Highest liveBytes since the last resetPeak(). */
  peakBytes: number;
  /** Bytes the backend holds from the system (allocator cache included). */
  reservedBytes: number;
  /** Allocations made from the system so far (a number that keeps rising means cache misses). */
  systemAllocations?: number;
}

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
  /** out = alpha·op(a)·op(b) + beta·out. */
  alpha?: number;
  beta?: number;
}

export interface AttentionOptions {
  causal: boolean;
  /** Softmax scale; 1/sqrt(dNope + dRope) unless a model (YaRN) says otherwise. */
  scale: number;
}

/**
 * The k/v slots of ring attention in one call (Backend.mlaAttentionRing): `ranks` slots of the
 * ring of rank `rank`, slot j holding the k/v of rank (rank − j) mod ranks as batch rows j·B …
 * j·B + B − 1 of [ranks·B, L, …] tensors (slot 0: the rank's own). The queries are the rank's L =
 * 2c zigzag tokens (chunks rank and 2·ranks−1−rank): slot 0 under the causal mask; a slot of a
 * lower rank seen by every query through its first c keys; a slot of a higher rank seen whole
 * by the second chunk's queries only (parallel/zigzag.ts, ringStep).
 */
export interface RingSlots {
  ranks: number;
  rank: number;
}

/** What the first and last blocks of a blockwise MLA backward also do (Backend.mlaAttentionBackwardBlock). */
export interface MlaBlockEnds {
  /** dqAcc = this block's dq instead of += (the block covers every row of dqAcc). */
  overwrite?: boolean;
  /** After this block: dqNope [B,L,H,Dn] and dqPe [B,L,H,Dr] (the q dtypes) = scale · dqAcc's two column ranges. */
  finish?: { dqNope: Tensor; dqPe: Tensor };
}

export interface AdamHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** true: AdamW (decay applied to the weights); false: Adam (decay added to the gradient, L2). */
  decoupled: boolean;
  /** 1-based step count for the bias corrections. */
  step: number;
  /** Multiplies the gradient before use (clipping and averaging folded in). */
  gradScale: number;
}

/**
 * What an optimizer pass leaves in the gradients it read: 'zero' writes zeros (4 bytes per f32
 * element, 2 per bf16), 'keep' leaves them, for a caller that marks them logically zero instead
 * (autograd/lazy_grad_zero.ts: the next step's first write overwrites them).
 */
export type GradsAfter = 'zero' | 'keep';

/** AdamHyper plus what the lean recipe's stochastic rounding hashes (backend/cpu/stochastic_round.ts). */
export interface LeanAdamHyper extends AdamHyper {
  /** The run's seed (u32). */
  seed: number;
  /** Slot i of the list draws the bits of stream firstStream + i (distinct streams across a run's lists). */
  firstStream: number;
}

export interface Backend extends StorageOwner {
  readonly kind: 'cpu' | 'cuda';
  /** What runs, in words, for the start-up line (e.g. "cpu, 2 cores" or the GPU's name). */
  readonly description: string;

  // ---- memory ----
  alloc(bytes: number): DeviceBuffer;
  free(buffer: DeviceBuffer): void;
  memoryStats(): MemoryStats;
  resetPeak(): void;
  /** Copies host data into a contiguous tensor of the same element count and matching array type. */
  write(dst: Tensor, src: HostArray): void;
  /** Reads a tensor (any view) back as a new contiguous host array. */
  read(src: Tensor): HostArray;
  /** Waits for all queued work (timing, and before reading results). */
  synchronize(): void;

  // ---- element movement ----
  /** dst[i] = src[i] over equal shapes; both views; converts between dtypes (f32/bf16/i32). */
  copy(dst: Tensor, src: Tensor): void;
  fill(dst: Tensor, value: number): void;

  // ---- elementwise and reductions ----
  /** out = op(x) (x view, same shape as out); 'scale' multiplies by scalar, 'addScalar' adds it. */
  unary(op: UnaryOp, out: Tensor, x: Tensor, scalar?: number): void;
  /**
   * out = a op b; a and b are views already broadcast to out's shape (stride 0 where broadcast).
   * Float dtypes may be mixed (computed in f32); i32 only with i32 everywhere (index arithmetic).
   */
  binary(op: BinaryOp, out: Tensor, a: Tensor, b: Tensor): void;
  /** out[r] = Σ_c x[r,c] (x viewed as [R, C] with C its last dimension; out has R elements). */
  sumLastDim(out: Tensor, x: Tensor): void;
  /** out[0] (f32) += Σ x² over all elements of x (gradient norms). */
  sumSquaresInto(out: Tensor, x: Tensor): void;
  /**
   * out[0] (f32) = Σ over the tensors of list (f32 or bf16, contiguous, one dtype) of Σ x²: the
   * squared global gradient norm in one pass. The sum's order is fixed (the CPU: tensor by tensor
   * in list order, each added into out in f32; CUDA: fixed block partials and one final
   * reduction, no float atomics), so a result is bitwise reproducible.
   */
  sumSquaresMulti(out: Tensor, list: TensorList<Tensor>): void;

  // ---- dense algebra ----
  /**
   * out[b] = alpha·op(a[b])·op(b[b]) + beta·out[b]. a is [M,K] or [batch,M,K] (before op),
   * b is [K,N] or [batch,K,N] (a rank-2 operand is shared by every batch), out is [M,N] or
   * [batch,M,N]. a and b share a dtype (bf16 or f32); out is f32 or that dtype.
   */
  matmul(out: Tensor, a: Tensor, b: Tensor, opts: MatmulOptions): void;
  /**
   * Grouped linear over experts' row blocks (one launch for all experts where the backend can):
   * rows [offsets[e] − offsets[0], offsets[e+1] − offsets[0]) of x and out belong to expert e,
   * offsets i32 [E+1] non-decreasing, on the device (its last block ends at out's last row, M).
   * out [M,N] = x_e [·,K] · weights[e]ᵀ with weights[e] [N,K] (E of them, any storage, contiguous);
   * x, weights and out share a dtype. An expert with no rows is skipped.
   */
  groupedLinear(out: Tensor, x: Tensor, weights: readonly Tensor[], offsets: Tensor): void;
  /** dx [M,K] = dy_e [·,N] · weights[e] [N,K] per row block (offsets as in groupedLinear). */
  groupedLinearBackwardData(dx: Tensor, dy: Tensor, weights: readonly Tensor[], offsets: Tensor): void;
  /**
   * dx [M,K] = dy1_e · w1[e] + dy2_e · w2[e] per row block (dy1, dy2 [M,N]; w1[e], w2[e] [N,K];
   * offsets as in groupedLinear): the input gradient of two grouped products of the same x (the
   * experts' gate, 1, and up, 2; ops/grouped_swiglu.ts). The reference value is autograd's sum of
   * the two products' gradients: each rounded as groupedLinearBackwardData rounds it, then added as
   * binary('add') adds (grouped_data_pair.ts), which the CPU backend gives bit for bit. A backend
   * may instead compute one reduction over the 2N-long [dy1 dy2]·[w1; w2], rounded once (CUDA's
   * tma set): within bf16 rounding of the reference, and closer to the exact sum.
   */
  groupedLinearBackwardDataPair(dx: Tensor, dy1: Tensor, dy2: Tensor, w1: readonly Tensor[], w2: readonly Tensor[], offsets: Tensor): void;
  /**
   * dweights[e] (f32 or bf16 [N,K], one dtype) = dy_eᵀ · x_e over expert e's rows (offsets as in
   * groupedLinear) + beta·dweights[e]. beta 1 (the default) accumulates, and an expert with no
   * rows leaves its dweights[e] as it is; beta 0 overwrites without reading, and an expert with no
   * rows gets zeros (the first gradient write of a step, autograd/lazy_grad_zero.ts).
   * squares (f32 [1]) is a request: a backend that can add up the squares of what it writes for
   * less than a pass over dweights sets squares[0] = Σ over every element of every dweights[e]
   * (as stored, after the write) and returns true; otherwise it leaves squares alone and returns
   * false (autograd/grad_squares.ts).
   */
  groupedLinearWeightGrad(dweights: readonly Tensor[], dy: Tensor, x: Tensor, offsets: Tensor, beta?: 0 | 1, squares?: Tensor): boolean;
  /**
   * Two weight products over the same rows x (the experts' gate, 1, and up, 2;
   * ops/grouped_swiglu.ts): groupedLinearWeightGrad(dw2, dy2, …) and groupedLinearWeightGrad(dw1,
   * dy1, …) with the same beta, each gradient written as that call writes it (so the values do not
   * depend on which form ran). squares as there, Σ over the gradients of both. A backend may run
   * them as one launch (CUDA's tma_pair set: the same tile of both products shares its x operand).
   */
  groupedLinearWeightGradPair(dw1: readonly Tensor[], dw2: readonly Tensor[], dy1: Tensor, dy2: Tensor, x: Tensor, offsets: Tensor, beta?: 0 | 1,
                              squares?: Tensor): boolean;
  /**
   * The experts' gate and up products and their SwiGLU: g = groupedLinear(x, gates), u =
   * groupedLinear(x, ups), h = silu(g)·u, all [M, N], with the values of those three calls (a
   * backend may do it in one pass; the CUDA tma set does, in the products' epilogue).
   */
  groupedSwiGLU(h: Tensor, g: Tensor, u: Tensor, x: Tensor, gates: readonly Tensor[], ups: readonly Tensor[], offsets: Tensor): void;

  // ---- model pieces ----
  /** y = x·rstd·w with rstd[r] = 1/sqrt(mean(x[r]²)+eps); x,y [R,D]; w [D]; rstd [R] f32. */
  rmsNorm(y: Tensor, rstd: Tensor, x: Tensor, w: Tensor, eps: number): void;
  /** dx (overwritten) and dw (f32 [D], accumulated: dw += Σ_r dy·x·rstd). */
  rmsNormBackward(dx: Tensor, dw: Tensor, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor): void;
  /**
   * Rotary embedding in DeepSeek's layout: x [B,S,H,D] holds interleaved pairs (x[2j], x[2j+1]);
   * out is de-interleaved: out[j] = x[2j]·cos − x[2j+1]·sin, out[j+D/2] = x[2j+1]·cos + x[2j]·sin,
   * with cos/sin [S, D/2] f32 tables (YaRN's magnitude scale already folded in).
   */
  rope(out: Tensor, x: Tensor, cos: Tensor, sin: Tensor): void;
  /** The adjoint of rope: dx (interleaved) from dout (de-interleaved). */
  ropeBackward(dx: Tensor, dout: Tensor, cos: Tensor, sin: Tensor): void;
  /** out = silu(gate)·up, all [R, F]. */
  swiglu(out: Tensor, gate: Tensor, up: Tensor): void;
  swigluBackward(dgate: Tensor, dup: Tensor, dout: Tensor, gate: Tensor, up: Tensor): void;
  /** out[n] = weight[ids[n]]; ids i32 [N], weight [V,D], out [N,D]. */
  embedding(out: Tensor, ids: Tensor, weight: Tensor): void;
  /**
   * dweight (f32 or bf16 [V,D], accumulated) += dout rows scattered by ids; a bf16 row gets the f32
   * sum of its rows added to its stored value and rounded once. With squares (f32 [1]) a
   * backend may also write Σ g² over the rows ids name, each row once, as stored after the write,
   * and return true; otherwise it leaves squares alone and returns false. The caller asks only
   * when dweight was zero before, so that sum is the whole gradient's (autograd/grad_squares.ts).
   */
  embeddingBackward(dweight: Tensor, ids: Tensor, dout: Tensor, squares?: Tensor): boolean;
  /**
   * Per-row softmax cross-entropy in f32. logits [N,V] (bf16 or f32), labels i32 [N] (a label < 0
   * is ignored: loss 0). loss [N] f32, lse [N] f32 (log-sum-exp, saved for backward).
   */
  crossEntropy(loss: Tensor, lse: Tensor, logits: Tensor, labels: Tensor): void;
  /** dlogits[n] = dloss[0]·scale·(softmax(logits[n]) − onehot(labels[n])); 0 for ignored rows. */
  crossEntropyBackward(dlogits: Tensor, logits: Tensor, labels: Tensor, lse: Tensor, dloss: Tensor, scale: number): void;
  /**
   * crossEntropy and its gradient in one pass over the logits, for a loss whose upstream gradient
   * is applied later (ops/linear_cross_entropy.ts scales the lm_head's products by it): loss and
   * lse as crossEntropy, dlogits[n] = scale·(softmax(logits[n]) − onehot(labels[n])), 0 for ignored
   * rows. dlogits may be logits itself. The bits are crossEntropy's, then crossEntropyBackward's
   * with dloss = 1.
   */
  crossEntropyWithGrad(loss: Tensor, lse: Tensor, dlogits: Tensor, logits: Tensor, labels: Tensor, scale: number): void;
  /** Row softmax over the last dimension, f32 in and out. */
  softmax(out: Tensor, x: Tensor): void;
  /** dx = y·(dy − Σ dy·y), rows of the last dimension, f32. */
  softmaxBackward(dx: Tensor, dy: Tensor, y: Tensor): void;
  /** The k largest entries of each row of x [N,E] f32, in descending order (ties: lower index first). */
  topk(values: Tensor, indices: Tensor, x: Tensor, k: number): void;
  /** counts[g,e] = #{m : idx[g,m] = e}; idx i32 [G,M]; counts i32 [G,E]. */
  bincount(counts: Tensor, idx: Tensor): void;
  /**
   * Groups routed slots by expert. expertOfSlot i32 [M] (M = N·k, slot m belongs to token
   * floor(m/k)); order i32 [M] lists slots sorted by expert, stable; offsets i32 [E+1] are the
   * group boundaries in order.
   */
  expertOrder(order: Tensor, offsets: Tensor, expertOfSlot: Tensor, numExperts: number): void;
  /** out[m] = (weights ? weights[m] : 1)·x[idx[m]]; x [N,D], idx i32 [M], out [M,D]. */
  gatherRows(out: Tensor, x: Tensor, idx: Tensor, weights: Tensor | null): void;
  /** out[idx[m]] += (weights ? weights[m] : 1)·src[m]; out [N,D] accumulated, src [M,D]. */
  scatterAddRows(out: Tensor, src: Tensor, idx: Tensor, weights: Tensor | null): void;
  /**
   * The inverse of expertOrder's order over one block of it: order i32 [S] is a permutation of
   * the slots [0,S); rowOfSlot i32 [S] gets, for each slot s = order[m], m − first when
   * first ≤ m < first + count (the slot's row among those count rows), and −1 otherwise.
   */
  expertOrderInverse(rowOfSlot: Tensor, order: Tensor, first: number, count: number): void;
  /**
   * out[n] = Σ_{j<k, r = rowOfSlot[n·k+j] ≥ 0} (weights ? weights[r] : 1)·rows[r] for rows [M,D],
   * rowOfSlot i32 [N·k] (k = its size / N), weights f32 [M] (or [M,1]) or null, out [N,D]
   * overwritten (0 for a token without rows): each token sums the rows of its k routed slots,
   * without atomics. The terms are added in f32 in increasing r (the order of the rows, which is
   * the order a scatter-add over the rows adds them in) and rounded once to out's dtype.
   */
  sumSlotRows(out: Tensor, rows: Tensor, rowOfSlot: Tensor, weights: Tensor | null): void;
  /**
   * The gradients of the weighted sumSlotRows, per row m of token t = tokenOfRow[m] (i32 [M]):
   * drows[m] = (weights ? weights[m] : 1)·dout[t] (drows [M,D], one rounding) and
   * dweights[m] = Σ_d dout[t,d]·rows[m,d] (f32 [M] or [M,1], f32 products summed in f32 or wider,
   * rounded once). Either output may be null, and is then not computed; rows is needed only for
   * dweights.
   */
  sumSlotRowsBackward(drows: Tensor | null, dweights: Tensor | null, dout: Tensor, rows: Tensor | null, tokenOfRow: Tensor, weights: Tensor | null): void;

  /**
   * MLA attention. qNope [B,Sq,H,Dn], qPe [B,Sq,H,Dr], kNope [B,Skv,H,Dn], kPe [B,Skv,1,Dr] (shared
   * by every head), v [B,Skv,H,Dv], all bf16 (or all f32); o [B,Sq,H,Dv] like the inputs; lse
   * [B,H,Sq] f32 (natural log of the softmax denominator of the scaled scores). Sq ≠ Skv is a
   * non-causal block (ring attention's steps); causal needs Sq = Skv (query i sees keys ≤ i).
   * View: qNope, kNope and v (here and in the backward) may be views of a wider [B,S,H,rs] tensor
   * (the projections they are split from: rs a multiple of 8, their other dimensions packed).
   */
  mlaAttention(o: Tensor, lse: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, opts: AttentionOptions): void;
  /** Gradients of mlaAttention (overwritten), each shaped as its input; dkPe [B,Skv,1,Dr] is summed over heads. */
  mlaAttentionBackward(
    grads: { dqNope: Tensor; dqPe: Tensor; dkNope: Tensor; dkPe: Tensor; dv: Tensor },
    dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, o: Tensor, lse: Tensor,
    opts: AttentionOptions,
  ): void;
  /**
   * The backward of one block of a longer attention (ring attention's steps): overwrites the
   * block's key-side gradients, as mlaAttentionBackward does, and ADDS the block's dq into rows
   * qFrom … qFrom+Sq−1 of dqAcc f32 [B,L,H,Dn+Dr] (q_nope's columns, then q_pe's) in units of
   * 1/scale (the unscaled Σ dS·k the kernels accumulate): dq = opts.scale · dqAcc once every
   * block is in. `ends.overwrite` (the first block, which must cover all L rows) sets dqAcc to the
   * block's dq instead; `ends.finish` (the last block) then writes dq = scale · dqAcc, all rows,
   * into its two tensors. So the per-query work of a backward (an f32 accumulator zeroed, read
   * and rounded) is done once for all blocks, inside the first and last blocks' own passes.
   */
  mlaAttentionBackwardBlock(
    dqAcc: Tensor, qFrom: number, grads: { dkNope: Tensor; dkPe: Tensor; dv: Tensor },
    dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, o: Tensor, lse: Tensor,
    opts: AttentionOptions, ends?: MlaBlockEnds,
  ): void;

  /**
   * Ring attention's forward of one rank in one call where this backend has such a launch
   * (RingSlots): qNope [B,L,H,Dn] and qPe the rank's L = 2c zigzag tokens; kNope [n·B,L,H,Dn],
   * kPe [n·B,L,1,Dr] and v [n·B,L,H,Dv] the n ranks' k/v in slots; o [B,L,H,Dv] and lse [B,H,L]
   * the causal attention of those queries over the whole sequence. Returns false, touching
   * nothing, where the backend has no such launch for these inputs: the caller then composes the
   * ring from mlaAttention and attentionMerge (parallel/ring_attention.ts).
   */
  mlaAttentionRing(o: Tensor, lse: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, ring: RingSlots, scale: number): boolean;
  /**
   * The backward of mlaAttentionRing in one call, or false as there: dqNope/dqPe [B,L,H,·] of the
   * queries, and dkNope/dkPe/dv in slots shaped as kNope/kPe/v, each slot's the gradient of that
   * rank's k/v from this rank's queries (dkPe summed over heads). Rows of keys that no query sees
   * (the last c of a lower rank's slot) are not written.
   */
  mlaAttentionBackwardRing(
    grads: { dqNope: Tensor; dqPe: Tensor; dkNope: Tensor; dkPe: Tensor; dv: Tensor },
    dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, o: Tensor, lse: Tensor, ring: RingSlots, scale: number,
  ): boolean;

  /**
   * Merges a partial attention over more keys into a running one (ring attention's steps):
   * accO f32 [B,c,H,Dv] and accLse f32 [B,H,c] (contiguous) hold the softmax-normalised output
   * and log-sum-exp over the keys seen so far; o [B,c,H,Dv] (any float dtype) and lse [B,H,c]
   * (views whose last dimensions are contiguous: o's [H,Dv] rows, lse's c) the same over other
   * keys. Afterwards acc holds them over both: lse' = log(e^lseAcc + e^lse), accO' =
   * accO·e^(lseAcc−lse') + o·e^(lse−lse'), computed without exponentiating a positive number.
   */
  attentionMerge(accO: Tensor, accLse: Tensor, o: Tensor, lse: Tensor): void;

  // ---- optimizer ----
  /**
   * One Adam/AdamW step on f32 master weights, in place: g = grad·gradScale (+ weightDecay·param
   * when not decoupled); m,v updated; param −= lr·(m̂/(√v̂+eps) (+ weightDecay·param when
   * decoupled)). lowp, when given, receives the new weights rounded to its dtype (the bf16 copy
   * used for compute).
   */
  adam(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, lowp: Tensor | null, h: AdamHyper): void;
  /**
   * The adam step of every slot of list in one pass, each element with adam's arithmetic
   * (h.weightDecay applies to the slots marked decay, 0 to the others), and then, with grads
   * 'zero' (the default), every slot's gradient set to 0 in the same pass (the next step
   * accumulates into it); with 'keep' the gradients are only read.
   */
  adamMulti(list: TensorList<AdamSlot>, h: AdamHyper, grads?: GradsAfter): void;
  /**
   * The lean recipe's step over every slot of list (bf16 weights and moments, no f32 master):
   * each element is widened to f32, stepped with adam's arithmetic, and the weights, m and v are
   * stored back to bf16 with stochastic rounding whose bits are hashed from (h.seed, h.step,
   * stream, element index, array) (backend/cpu/stochastic_round.ts); the gradients as adamMulti's.
   */
  adamLeanMulti(list: TensorList<LeanAdamSlot>, h: LeanAdamHyper, grads?: GradsAfter): void;
}

/**
 * The backend that holds t's memory. Storage (tensor/storage.ts) types its owner by the smaller
 * StorageOwner so that tensor/ need not import this file; every owner is a Backend, since only a
 * Backend's alloc makes the buffers that storages hold (through emptyTensor). TypeScript cannot
 * see that, hence the one cast of this design, here.
 */
export function backendOf(t: Tensor): Backend {
  return t.storage.owner as Backend;
}
