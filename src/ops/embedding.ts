// Token embedding lookup; the backward scatters rows into the weight's gradient (f32; bf16 in the
// lean recipe with one micro-batch a step, each row summed in f32 and rounded once). The scatter
// can only add, so a gradient marked logically zero (autograd/lazy_grad_zero.ts) is zero-filled
// first (the same pass a zeroing optimizer would spend on it). Such a gradient is nonzero only in
// the rows this micro-batch's ids name, so the backend may leave the squares of those rows for
// the gradient norm (autograd/grad_squares.ts), which then does not read the whole [V, D]
// gradient (840 MB in f32 at DeepSeek-V2-Lite's vocabulary); a second micro-batch's scatter
// drops that record.
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs } from '../autograd/tape.js';
import { accumulateLeafGrad } from '../autograd/backward.js';
import { forgetGradSquares, isRecordingGradSquares, recordGradSquares } from '../autograd/grad_squares.js';
import { isGradZeroPending, settleGrad } from '../autograd/lazy_grad_zero.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

/** ids i32 [...], weight [V, D] → [..., D]. */
export function embedding(ids: Tensor, weight: Tensor): Tensor {
  const backend = backendOf(weight);
  const D = weight.shape[1]!;
  const out = emptyTensor(backend, [...ids.shape, D], weight.dtype);
  backend.embedding(out, ids, weight);
  const node = beginNode('embedding', [weight], 1);
  if (node) {
    const sids = node.save(ids);
    node.rule = ([g]) => {
      const direct = weight.requiresGrad && !weight.gradLink && weight.grad !== null;
      const dw = direct ? weight.grad! : emptyTensor(backend, weight.shape, 'f32');
      const wasZero = direct && isGradZeroPending(dw);
      if (direct) { settleGrad(dw); forgetGradSquares(dw); } else backend.fill(dw, 0);
      const squares = wasZero && isRecordingGradSquares() ? emptyTensor(backend, [1], 'f32') : undefined;
      if (backend.embeddingBackward(dw, sids, g!, squares)) recordGradSquares([dw], squares!);
      else squares?.dispose();
      if (direct) return [null];
      if (weight.requiresGrad && !weight.gradLink) { accumulateLeafGrad(weight, dw); dw.dispose(); return [null]; }
      return [dw];
    };
  }
  linkOutputs(node, [out]);
  return out;
}
