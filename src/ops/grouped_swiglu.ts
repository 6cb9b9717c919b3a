// The routed experts' gate and up products and their SwiGLU, h = silu(x·Wg_eᵀ)·(x·Wu_eᵀ) per
// expert row block.
// - Forward is one backend call: on CUDA's tma set one launch whose epilogue computes the SwiGLU
//   from the products it has just rounded (kernels/grouped_gemm_tma.cu, "SwiGLU"), so the SwiGLU
//   pass's read of both products and a launch go.
// - On the tape it is one node for the two products (outputs g and u), then swiglu's own node
//   (ops/swiglu.ts: its recompute in backward, what it saves). Why one node: x's gradient,
//   dg·Wg + du·Wu, is then one backend call (Backend.groupedLinearBackwardDataPair), which CUDA's
//   tma set can make one product over the 2N-long reduction, written and rounded once, instead of
//   two products and autograd's add of them (the add alone ~0.71 ms a step on an H100, issue 16;
//   GroupedGemmLauncher.gateUpData, on by default). The
//   CPU oracle composes that call from the two products and the add, so on the CPU this node
//   gives the bits of the two groupedLinear nodes it replaces (backend/grouped_data_pair.ts), and
//   each weight's gradient is groupedLinear's, the up's first, as the two nodes ran them. Both
//   products' weight gradients are one backend call too (Backend.groupedLinearWeightGradPair),
//   which CUDA's tma_pair set runs as one launch whose CTA pairs share x's tiles
//   (kernels/grouped_gemm_tma_dw.cuh, "Weight product in CTA pairs"); each gradient's values are those of its own product.
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs, needsGrad } from '../autograd/tape.js';
import { accumulateLeafGrad } from '../autograd/backward.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import { groupedLinearShape, groupedWeightGradPair, groupedWeightGrads } from './grouped_linear.js';
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
        if (M > 0 && dg && du && x.gradLink) {
          backend.groupedLinearBackwardDataPair(gx, dg, du, sg, su, so);
        } else if (M > 0 && dg && du) {
          // A leaf x (tests; the model's x is gathered rows) adds each product into its f32
          // gradient, as the two nodes did, where the pair would round their sum to x's dtype first.
          const fromUp = emptyTensor(backend, [M, K], x.dtype);
          backend.groupedLinearBackwardData(fromUp, du, su, so);
          accumulateLeafGrad(x, fromUp);
          fromUp.dispose();
          backend.groupedLinearBackwardData(gx, dg, sg, so);
        } else if (M > 0) {
          backend.groupedLinearBackwardData(gx, (dg ?? du)!, dg ? sg : su, so);
        }
      }
      const none = () => gates.map(() => null);
      if (dg && du) {
        const [gateGrads, upGrads] = groupedWeightGradPair(gates, dg, ups, du, sx, so);
        return [gx, ...gateGrads, ...upGrads];
      }
      const upGrads = du ? groupedWeightGrads(ups, du, sx, so) : none();
      const gateGrads = dg ? groupedWeightGrads(gates, dg, sx, so) : none();
      return [gx, ...gateGrads, ...upGrads];
    };
  }
  linkOutputs(node, [g, u]);
  recordSwiglu(g, u, h);
  return h;
}
