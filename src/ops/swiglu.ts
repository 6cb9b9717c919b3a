// SwiGLU activation: silu(gate)·up.
import { beginNode, linkOutputs } from '../autograd/tape.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

export function swiglu(gate: Tensor, up: Tensor): Tensor {
  const out = emptyTensor(gate.backend, gate.shape, gate.dtype);
  gate.backend.swiglu(out, gate, up);
  const node = beginNode('swiglu', [gate, up], 1);
  if (node) {
    const sg = node.save(gate), su = node.save(up);
    node.rule = ([g]) => {
      const dg = emptyTensor(gate.backend, gate.shape, gate.dtype);
      const du = emptyTensor(gate.backend, up.shape, up.dtype);
      gate.backend.swigluBackward(dg, du, g!, sg, su);
      return [dg, du];
    };
  }
  linkOutputs(node, [out]);
  return out;
}
