// The routed experts' gate and up products and their SwiGLU, h = silu(x·Wg_eᵀ)·(x·Wu_eᵀ) per
// expert row block.
// - Forward is one backend call: on CUDA's tma set one launch whose epilogue computes the SwiGLU
//   from the products it has just rounded (kernels/grouped_gemm_tma.cu, "SwiGLU"), so the SwiGLU
//   pass's read of both products and a launch go.
// - On the tape it is one node for the two products (outputs g and u), then swiglu's own node
//   (ops/swiglu.ts: its recompute in backward, what it saves). The node's backward gives x's
//   gradient as one pair data product, dg·Wg + du·Wu over the 2N-long reduction, written and
//   rounded once (Backend.groupedLinearBackwardDataPair) instead of two products and a sum, and
//   each weight's gradient as groupedLinear's backward does (groupedWeightGrads).
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs, needsGrad } from '../autograd/tape.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import { groupedLinearShape, groupedWeightGrads } from './grouped_linear.js';
import { recordSwiglu } from './swiglu.js';

/** h [M, N] = silu(g)·u with g, u = groupedLinear(x, gates / ups, offsets); gates and ups E × [N, K]. */
export function groupedSwiGLU(x: Tensor, gates: readonly Tensor[], ups: readonly Tensor[], offsets: Tensor): Tensor {
  const backend = backendOf(x);
  const [M, N] = groupedLinearShape(x, gates, offsets);
  const [, Nu] = groupedLinearShape(x, ups, offsets);
  if (Nu !== N || ups.length !== gates.length) throw new Error(`internal: groupedSwiGLU over ${gates.length} gates of width ${N} and ${ups.length} ups of width ${Nu}`);
  const K = x.shape[1]!;
  const g = emptyTensor(backend, [M, N], x.dtype), u = emptyTensor(backend, [M, N], x.dtype), h = emptyTensor(backend, [M, N], x.dtype);
  if (M > 0) backend.groupedSwiGLU(h, g, u, x, gates, ups, offsets);
  const node = beginNode('groupedGateUp', [x, ...gates, ...ups], 2);
  if (node) {
    const sx = node.save(x), so = node.save(offsets), sg = gates.map((w) => node.save(w)), su = ups.map((w) => node.save(w));
    node.rule = ([dg, du]) => {
      for (const d of [dg, du]) if (d && !d.isContiguous()) throw new Error(`internal: groupedSwiGLU gradient must be contiguous, got ${d}`);
      let gx: Tensor | null = null;
      if (needsGrad(x) && (dg || du)) {
        gx = emptyTensor(backend, [M, K], x.dtype);
        if (M > 0) {
          if (dg && du) backend.groupedLinearBackwardDataPair(gx, dg, du, sg, su, so);
          else backend.groupedLinearBackwardData(gx, (dg ?? du)!, dg ? sg : su, so);
        }
      }
      const none = () => gates.map(() => null);
      return [gx, ...(dg ? groupedWeightGrads(gates, dg, sx, so) : none()), ...(du ? groupedWeightGrads(ups, du, sx, so) : none())];
    };
  }
  linkOutputs(node, [g, u]);
  recordSwiglu(g, u, h);
  return h;
}
