// SwiGLU activation: silu(gate)·up.
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs } from '../autograd/tape.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

export function swiglu(gate: Tensor, up: Tensor): Tensor {
  const backend = backendOf(gate);
  const out = emptyTensor(backend, gate.shape, gate.dtype);
  backend.swiglu(out, gate, up);
  const node = beginNode('swiglu', [gate, up], 1);
  if (node) {
    const sg = node.save(gate), su = node.save(up);
    node.rule = ([g]) => {
      const dg = emptyTensor(backend, gate.shape, gate.dtype);
      const du = emptyTensor(backend, up.shape, up.dtype);
      backend.swigluBackward(dg, du, g!, sg, su);
      return [dg, du];
    };
  }
  linkOutputs(node, [out]);
  return out;
}
