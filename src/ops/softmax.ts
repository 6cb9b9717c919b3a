// Row softmax in f32 (the MoE router's probabilities).
import { beginNode, linkOutputs } from '../autograd/tape.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

export function softmax(x: Tensor): Tensor {
  if (x.dtype !== 'f32') throw new Error(`internal: softmax expects f32, got ${x.dtype}`);
  const out = emptyTensor(x.backend, x.shape, 'f32');
  x.backend.softmax(out, x);
  const node = beginNode('softmax', [x], 1);
  if (node) {
    const sy = node.save(out);
    node.rule = ([g]) => {
      const dx = emptyTensor(x.backend, x.shape, 'f32');
      x.backend.softmaxBackward(dx, g!, sy);
      return [dx];
    };
  }
  linkOutputs(node, [out]);
  return out;
}
