// Backend.groupedLinearWeightGradPair as the two weight products it stands for, for the backends
// and kernel sets with no one-launch kernel of their own (the CPU oracle; on CUDA every set but
// tma_pair, and the shapes and betas it declines). The second product runs first, as autograd
// ran the up's node before the gate's when they were two nodes; each gradient is written by one
// product only, so the order changes no value. With squares, each product is asked for the Σ of
// its own squares and the two are added; if either declines, squares is left alone (false), and
// the norm reads the gradients itself.
import type { Backend } from './backend.js';
import { tidy } from '../tensor/scope.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

export function groupedWeightPairByParts(be: Backend, dw1: readonly Tensor[], dw2: readonly Tensor[], dy1: Tensor, dy2: Tensor, x: Tensor,
                                         offsets: Tensor, beta: 0 | 1, squares?: Tensor): boolean {
  if (dy1.shape[0] !== dy2.shape[0] || dy1.shape[1] !== dy2.shape[1] || dw1.length !== dw2.length) {
    throw new Error(`internal: groupedLinearWeightGradPair over dy [${dy1.shape}] and [${dy2.shape}], ${dw1.length} and ${dw2.length} experts`);
  }
  if (!squares) {
    be.groupedLinearWeightGrad(dw2, dy2, x, offsets, beta);
    be.groupedLinearWeightGrad(dw1, dy1, x, offsets, beta);
    return false;
  }
  return tidy(() => {
    const second = emptyTensor(be, [1], 'f32'), first = emptyTensor(be, [1], 'f32');
    const gave2 = be.groupedLinearWeightGrad(dw2, dy2, x, offsets, beta, second);
    const gave1 = be.groupedLinearWeightGrad(dw1, dy1, x, offsets, beta, first);
    if (!gave1 || !gave2) return false;
    be.binary('add', squares, first, second);
    return true;
  });
}
