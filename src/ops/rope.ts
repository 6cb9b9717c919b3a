// Rotary position embedding in DeepSeek's interleaved-pair layout (see Backend.rope): the output
// is de-interleaved, as in the HF implementation, and the cos/sin tables carry YaRN's scaling.
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs } from '../autograd/tape.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

/** x [B,S,H,D] with cos/sin [S, D/2] f32 tables. */
export function rope(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const backend = backendOf(x);
  const out = emptyTensor(backend, x.shape, x.dtype);
  backend.rope(out, x, cos, sin);
  const node = beginNode('rope', [x], 1);
  if (node) {
    const c = node.save(cos), s = node.save(sin);
    node.rule = ([g]) => {
      const dx = emptyTensor(backend, x.shape, x.dtype);
      backend.ropeBackward(dx, g!, c, s);
      return [dx];
    };
  }
  linkOutputs(node, [out]);
  return out;
}
