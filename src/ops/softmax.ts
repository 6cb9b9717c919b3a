// Row softmax in f32 (the MoE router's probabilities).
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs } from '../autograd/tape.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

export function softmax(x: Tensor): Tensor {
  const backend = backendOf(x);
  if (x.dtype !== 'f32') throw new Error(`internal: softmax expects f32, got ${x.dtype}`);
  const out = emptyTensor(backend, x.shape, 'f32');
  backend.softmax(out, x);
  const node = beginNode('softmax', [x], 1);
  if (node) {
    const sy = node.save(out);
    node.rule = ([g]) => {
      const dx = emptyTensor(backend, x.shape, 'f32');
      backend.softmaxBackward(dx, g!, sy);
      return [dx];
    };
  }
  linkOutputs(node, [out]);
  return out;
}
