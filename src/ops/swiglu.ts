// SwiGLU activation: silu(gate)·up. Its output is recomputed in backward from the saved gate and
// up rather than kept for the projection that reads it (autograd/recompute.ts): one elementwise
// pass more, and an [R, F] activation less per MLP from forward to backward.
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs } from '../autograd/tape.js';
import { markRecomputable } from '../autograd/recompute.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

export function swiglu(gate: Tensor, up: Tensor): Tensor {
  const out = emptyTensor(backendOf(gate), gate.shape, gate.dtype);
  backendOf(gate).swiglu(out, gate, up);
  recordSwiglu(gate, up, out);
  return out;
}

/** The tape's node for out = swiglu(gate, up), where out was computed by the caller (ops/grouped_swiglu.ts). */
export function recordSwiglu(gate: Tensor, up: Tensor, out: Tensor): void {
  const backend = backendOf(gate);
  const node = beginNode('swiglu', [gate, up], 1);
  if (node) {
    const sg = node.save(gate), su = node.save(up);
    markRecomputable(out, [gate, up], (dst, [g, u]) => backend.swiglu(dst, g!, u!), 'compute');
    node.rule = ([g]) => {
      const dg = emptyTensor(backend, gate.shape, gate.dtype);
      const du = emptyTensor(backend, up.shape, up.dtype);
      backend.swigluBackward(dg, du, g!, sg, su);
      return [dg, du];
    };
  }
  linkOutputs(node, [out]);
}
