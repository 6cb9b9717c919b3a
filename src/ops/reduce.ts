// Reductions (f32 accumulation): sums over the last dimension or over everything.
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs } from '../autograd/tape.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import { broadcastView } from './shape.js';

/** Σ over the last dimension: [..., C] → [...] (f32 out; differentiable). */
export function sumLastDim(x: Tensor): Tensor {
  const backend = backendOf(x);
  const outShape = x.shape.slice(0, -1);
  const out = emptyTensor(backend, outShape, 'f32');
  const src = x.isContiguous() ? x : contiguousCopy(x);
  backend.sumLastDim(out, src);
  if (src !== x) src.dispose();
  const node = beginNode('sumLastDim', [x], 1);
  if (node) {
    node.rule = ([g]) => {
      const gv = g!.view([...outShape, 1], [...g!.strides, 0], g!.offset);
      const b = broadcastView(gv, x.shape);
      const gx = emptyTensor(backend, x.shape, x.dtype);
      backend.copy(gx, b);
      gv.dispose(); b.dispose();
      return [gx];
    };
  }
  linkOutputs(node, [out]);
  return out;
}

/** Σ of every element: a [1] f32 tensor (differentiable). */
export function sumAll(x: Tensor): Tensor {
  const backend = backendOf(x);
  const dense = x.isContiguous() ? x : contiguousCopy(x);
  const rows = dense.view([1, x.size], [x.size, 1], dense.offset);
  const out = emptyTensor(backend, [1], 'f32');
  backend.sumLastDim(out, rows);
  rows.dispose();
  if (dense !== x) dense.dispose();
  const node = beginNode('sumAll', [x], 1);
  if (node) {
    node.rule = ([g]) => {
      const b = g!.view(x.shape, x.shape.map(() => 0), g!.offset);
      const gx = emptyTensor(backend, x.shape, x.dtype);
      backend.copy(gx, b);
      b.dispose();
      return [gx];
    };
  }
  linkOutputs(node, [out]);
  return out;
}

function contiguousCopy(x: Tensor): Tensor {
  const backend = backendOf(x);
  const c = emptyTensor(backend, x.shape, x.dtype);
  backend.copy(c, x);
  return c;
}
