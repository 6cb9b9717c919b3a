// The routed experts' linear layers as one product over all experts: rows sorted by expert, the
// block of expert e (rows [offsets[e] − offsets[0], offsets[e+1] − offsets[0])) multiplied by
// its own weight. The row counts stay on the device (offsets i32 [E+1]); only the total M is
// known on the host. Backward gives dx in one grouped product and writes each expert's dW
// straight into its parameter's gradient (f32; bf16 in the lean recipe), as linear.ts does for
// one weight: accumulated (beta = 1), or overwritten (beta = 0) when the step's first write
// finds every expert's gradient logically zero (autograd/lazy_grad_zero.ts). An overwrite also
// asks the backend for the Σ of the squares of what it wrote, for the step's gradient norm
// (autograd/grad_squares.ts).
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs, needsGrad } from '../autograd/tape.js';
import { accumulateLeafGrad } from '../autograd/backward.js';
import { claimGradBeta, isGradZeroPending, settleGrad } from '../autograd/lazy_grad_zero.js';
import { forgetGradSquares, isRecordingGradSquares, recordGradSquares } from '../autograd/grad_squares.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

/** A weight whose gradient the backward writes in place: a leaf with its preallocated grad. */
function direct(w: Tensor): boolean { return w.requiresGrad && !w.gradLink && w.grad !== null; }

/** The shape of groupedLinear(x, weights, offsets): [M, N]; throws on inconsistent operands. */
export function groupedLinearShape(x: Tensor, weights: readonly Tensor[], offsets: Tensor): [number, number] {
  const E = weights.length;
  if (x.rank !== 2 || !x.isContiguous()) throw new Error(`internal: groupedLinear input must be a contiguous [M, K], got ${x}`);
  if (E === 0) throw new Error('internal: groupedLinear over no experts');
  const [M, K] = x.shape as [number, number];
  const N = weights[0]!.shape[0]!;
  weights.forEach((w, e) => {
    if (w.rank !== 2 || w.shape[0] !== N || w.shape[1] !== K) throw new Error(`internal: groupedLinear expert ${e} weight [${w.shape}], expected [${N}, ${K}]`);
  });
  if (offsets.dtype !== 'i32' || offsets.size !== E + 1) throw new Error(`internal: groupedLinear offsets ${offsets} for ${E} experts (i32 [E+1])`);
  return [M, N];
}

/** y [M, N] = x_e · weights[e]ᵀ per expert row block; x [M, K], weights E × [N, K], offsets i32 [E+1]. */
export function groupedLinear(x: Tensor, weights: readonly Tensor[], offsets: Tensor): Tensor {
  const backend = backendOf(x);
  const [M, N] = groupedLinearShape(x, weights, offsets);
  const out = emptyTensor(backend, [M, N], x.dtype);
  if (M > 0) backend.groupedLinear(out, x, weights, offsets);
  recordGroupedLinear(x, weights, offsets, out);
  return out;
}

/** The tape's node for out = groupedLinear(x, weights, offsets), where out was computed by the caller. */
function recordGroupedLinear(x: Tensor, weights: readonly Tensor[], offsets: Tensor, out: Tensor): void {
  const backend = backendOf(x);
  const [M, K] = x.shape as [number, number];
  const node = beginNode('groupedLinear', [x, ...weights], 1);
  if (node) {
    const sx = node.save(x), so = node.save(offsets), sw = weights.map((w) => node.save(w));
    node.rule = ([g]) => {
      if (!g!.isContiguous()) throw new Error(`internal: groupedLinear gradient must be contiguous, got ${g}`);
      let gx: Tensor | null = null;
      if (needsGrad(x)) {
        gx = emptyTensor(backend, [M, K], x.dtype);
        if (M > 0) backend.groupedLinearBackwardData(gx, g!, sw, so);
      }
      return [gx, ...groupedWeightGrads(weights, g!, sx, so)];
    };
  }
  linkOutputs(node, [out]);
}

/**
 * The weights' side of a grouped product's backward (dy the output's gradient, x and offsets as
 * saved): leaves with a gradient take dW in place; any other weight gets an f32 tensor of its own
 * that is returned (null elsewhere) or added into its leaf, as linear.ts does.
 */
export function groupedWeightGrads(weights: readonly Tensor[], dy: Tensor, x: Tensor, offsets: Tensor): (Tensor | null)[] {
  return weightGrads([[weights, dy]], x, offsets)[0]!;
}

/**
 * groupedWeightGrads of two products over the same x (the experts' gate, 1, and up, 2), as one
 * backend call (Backend.groupedLinearWeightGradPair: one launch on CUDA's tma_pair set).
 * Returns the first product's gradients, then the second's.
 */
export function groupedWeightGradPair(w1: readonly Tensor[], dy1: Tensor, w2: readonly Tensor[], dy2: Tensor, x: Tensor,
                                      offsets: Tensor): [(Tensor | null)[], (Tensor | null)[]] {
  const [g1, g2] = weightGrads([[w1, dy1], [w2, dy2]], x, offsets);
  return [g1!, g2!];
}

/** One or two products' weight gradients in one backend call (groupedWeightGrads, groupedWeightGradPair). */
function weightGrads(products: readonly (readonly [readonly Tensor[], Tensor])[], x: Tensor, offsets: Tensor): (Tensor | null)[][] {
  const backend = backendOf(x);
  const gws = products.map(([weights]) => weights.map((): Tensor | null => null));
  const all = products.flatMap(([weights]) => weights);
  if (x.shape[0] === 0 || !all.some(needsGrad)) return gws;
  // One beta for the whole call: 0 when no target holds values to keep (fresh tensors,
  // gradients marked logically zero; an expert without rows then gets zeros), else 1 with the
  // fresh and the marked ones zero-filled first (a mix of marked and written gradients does not
  // arise in training, where the optimizer marks them all at once).
  const overwrite = all.every((w) => !direct(w) || isGradZeroPending(w.grad!));
  const targets = products.map(([weights]) => weights.map((w) => {
    if (direct(w)) {
      // Both make any record of the gradient's squares stale; settleGrad only when it fills.
      if (overwrite) claimGradBeta(w.grad!); else { settleGrad(w.grad!); forgetGradSquares(w.grad!); }
      return w.grad!;
    }
    const t = emptyTensor(backend, w.shape, 'f32');
    if (!overwrite) backend.fill(t, 0);
    return t;
  }));
  // The squares are worth recording when every target is a leaf's gradient (the norm reads those).
  const record = overwrite && isRecordingGradSquares() && all.every(direct);
  const squares = record ? emptyTensor(backend, [1], 'f32') : undefined;
  const beta = overwrite ? 0 : 1;
  const gave = products.length === 1
    ? backend.groupedLinearWeightGrad(targets[0]!, products[0]![1], x, offsets, beta, squares)
    : backend.groupedLinearWeightGradPair(targets[0]!, targets[1]!, products[0]![1], products[1]![1], x, offsets, beta, squares);
  if (gave) recordGradSquares(targets.flat(), squares!);
  else squares?.dispose();
  products.forEach(([weights], p) => weights.forEach((w, e) => {
    if (direct(w)) return;
    const t = targets[p]![e]!;
    if (w.requiresGrad && !w.gradLink) { accumulateLeafGrad(w, t); t.dispose(); }
    else if (needsGrad(w)) gws[p]![e] = t;
    else t.dispose();
  }));
  return gws;
}
