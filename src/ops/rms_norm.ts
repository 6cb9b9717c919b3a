// RMSNorm over the last dimension; statistics in f32; the weight's gradient is accumulated
// in f32 straight into the parameter's grad when it has one. The backend only adds into dw, so
// a gradient marked logically zero (autograd/lazy_grad_zero.ts) is zero-filled first (D floats).
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs, needsGrad } from '../autograd/tape.js';
import { accumulateLeafGrad } from '../autograd/backward.js';
import { settleGrad } from '../autograd/lazy_grad_zero.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

export function rmsNorm(x: Tensor, w: Tensor, eps: number): Tensor {
  const backend = backendOf(x);
  const D = x.shape[x.rank - 1]!;
  if (w.size !== D) throw new Error(`internal: rmsNorm weight [${w.shape}] for width ${D}`);
  const y = emptyTensor(backend, x.shape, x.dtype);
  const rstd = emptyTensor(backend, [x.size / D], 'f32');
  backend.rmsNorm(y, rstd, x, w, eps);
  const node = beginNode('rmsNorm', [x, w], 1);
  if (node) {
    const sx = node.save(x), sw = node.save(w), sr = node.save(rstd);
    node.rule = ([g]) => {
      const dx = emptyTensor(backend, x.shape, x.dtype);
      const direct = w.requiresGrad && !w.gradLink && w.grad !== null;
      let dw = direct ? w.grad! : emptyTensor(backend, w.shape, 'f32');
      if (direct) settleGrad(dw); else backend.fill(dw, 0);
      backend.rmsNormBackward(dx, dw, g!, sx, sw, sr);
      if (!direct && w.requiresGrad && !w.gradLink) { accumulateLeafGrad(w, dw); dw.dispose(); return [dx, null]; }
      return [dx, direct || !needsGrad(w) ? null : dw];
    };
  }
  rstd.dispose();
  linkOutputs(node, [y]);
  return y;
}
