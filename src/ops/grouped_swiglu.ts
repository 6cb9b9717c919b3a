// The routed experts' gate and up products and their SwiGLU, h = silu(x·Wg_eᵀ)·(x·Wu_eᵀ) per
// expert row block, made by one backend call: on CUDA's tma set one launch whose epilogue computes
// the SwiGLU from the products it has just rounded (kernels/grouped_gemm_tma.cu, "SwiGLU"), so
// the SwiGLU pass's read of both products and a launch go. It is recorded on the tape as the
// three ops it replaces (groupedLinear twice, then swiglu) with the same values, so backward,
// recompute (autograd/recompute.ts) and what is saved for backward are theirs exactly.
import { backendOf } from '../backend/backend.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import { groupedLinearShape, recordGroupedLinear } from './grouped_linear.js';
import { recordSwiglu } from './swiglu.js';

/** h [M, N] = silu(g)·u with g, u = groupedLinear(x, gates / ups, offsets); gates and ups E × [N, K]. */
export function groupedSwiGLU(x: Tensor, gates: readonly Tensor[], ups: readonly Tensor[], offsets: Tensor): Tensor {
  const backend = backendOf(x);
  const [M, N] = groupedLinearShape(x, gates, offsets);
  const [, Nu] = groupedLinearShape(x, ups, offsets);
  if (Nu !== N || ups.length !== gates.length) throw new Error(`internal: groupedSwiGLU over ${gates.length} gates of width ${N} and ${ups.length} ups of width ${Nu}`);
  const g = emptyTensor(backend, [M, N], x.dtype), u = emptyTensor(backend, [M, N], x.dtype), h = emptyTensor(backend, [M, N], x.dtype);
  if (M > 0) backend.groupedSwiGLU(h, g, u, x, gates, ups, offsets);
  recordGroupedLinear(x, gates, offsets, g);
  recordGroupedLinear(x, ups, offsets, u);
  recordSwiglu(g, u, h);
  return h;
}
