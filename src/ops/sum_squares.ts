// Σ x² over whole tensors in f32: the squared global L2 norm of the gradients, before clipping.
// One f32 scalar collects every tensor's sum on the device, so a norm over all parameters costs
// one device read. Not differentiable (nothing needs its gradient).
import { backendOf } from '../backend/backend.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

/**
 * Adds Σ x² over every element of each tensor in xs (f32 or bf16, any view) into into[0], an f32
 * [1] tensor; without `into`, into a new zeroed one. Returns the accumulator.
 */
export function sumOfSquares(xs: readonly Tensor[], into?: Tensor): Tensor {
  if (into && (into.dtype !== 'f32' || into.size !== 1)) throw new Error(`internal: sumOfSquares accumulates into an f32 [1] tensor, got ${into}`);
  const first = into ?? xs[0];
  if (!first) throw new Error('internal: sumOfSquares of no tensors and no accumulator');
  const backend = backendOf(first);
  let out = into;
  if (!out) {
    out = emptyTensor(backend, [1], 'f32');
    backend.fill(out, 0);
  }
  for (const x of xs) {
    if (x.dtype === 'i32') throw new Error(`internal: sumOfSquares of an i32 tensor (${x})`);
    if (x.isContiguous()) {
      backend.sumSquaresInto(out, x);
      continue;
    }
    const dense = emptyTensor(backend, x.shape, x.dtype);
    backend.copy(dense, x);
    backend.sumSquaresInto(out, dense);
    dense.dispose();
  }
  return out;
}
