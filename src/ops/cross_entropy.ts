// Mean softmax cross-entropy over a large vocabulary, computed in f32 from bf16 logits without
// an f32 copy of the logits; rows with a negative label are ignored.
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs } from '../autograd/tape.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

/**
 * logits [N, V], labels i32 [N] → mean loss [1] f32 over `count` rows (the number of labelled
 * rows, known to the caller from the data, so no device read is needed).
 */
export function crossEntropyMean(logits: Tensor, labels: Tensor, count: number): Tensor {
  const backend = backendOf(logits);
  const V = logits.shape[logits.rank - 1]!, N = logits.size / V;
  const loss = emptyTensor(backend, [N], 'f32');
  const lse = emptyTensor(backend, [N], 'f32');
  backend.crossEntropy(loss, lse, logits, labels);
  const mean = emptyTensor(backend, [1], 'f32');
  const rows = loss.view([1, N], [N, 1], 0);
  backend.sumLastDim(mean, rows);
  backend.unary('scale', mean, mean, 1 / Math.max(count, 1));
  rows.dispose(); loss.dispose();
  const node = beginNode('crossEntropy', [logits], 1);
  if (node) {
    const sl = node.save(logits), sy = node.save(labels), sz = node.save(lse);
    node.rule = ([g]) => {
      const dx = emptyTensor(backend, logits.shape, logits.dtype);
      backend.crossEntropyBackward(dx, sl, sy, sz, g!, 1 / Math.max(count, 1));
      return [dx];
    };
  }
  lse.dispose();
  linkOutputs(node, [mean]);
  return mean;
}
