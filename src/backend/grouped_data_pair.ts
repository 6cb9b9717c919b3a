// Backend.groupedLinearBackwardDataPair as two data products and their sum, for the backends and
// kernel sets with no one-reduction kernel of their own (the CPU oracle; on CUDA every set but
// tma and tma_pair, and their shapes they decline). It gives the bits autograd gives when the
// gate and the up products are recorded as two nodes (ops/grouped_swiglu.ts before it recorded
// one): autograd/backward.ts runs the later-recorded node, the up's, first, so x's gradient slot
// holds round(dy2·w2) when round(dy1·w1) arrives and is added into it in place,
// binary('add', acc, acc, g). This does exactly that, in that order. Why keep those numerics
// rather than one rounding: the CPU backend is the oracle, and the golden demo run and the CPU
// equivalence tests (sharded against whole, pipelined, recomputed: bit for bit in bf16) were
// recorded with them; CUDA's one-reduction kernel is checked against this within bf16 tolerance
// (test/cuda_grouped_gemm.test.ts).
import type { Backend } from './backend.js';
import { tidy } from '../tensor/scope.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

export function groupedDataPairByParts(be: Backend, dx: Tensor, dy1: Tensor, dy2: Tensor, w1: readonly Tensor[], w2: readonly Tensor[], offsets: Tensor): void {
  if (dy1.shape[0] !== dy2.shape[0] || dy1.shape[1] !== dy2.shape[1] || w1.length !== w2.length) {
    throw new Error(`internal: groupedLinearBackwardDataPair over dy [${dy1.shape}] and [${dy2.shape}], ${w1.length} and ${w2.length} experts`);
  }
  be.groupedLinearBackwardData(dx, dy2, w2, offsets);
  tidy(() => {
    const first = emptyTensor(be, dx.shape, dx.dtype);
    be.groupedLinearBackwardData(first, dy1, w1, offsets);
    be.binary('add', dx, dx, first);
  });
}
