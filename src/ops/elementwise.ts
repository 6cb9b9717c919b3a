// Elementwise arithmetic with broadcasting, casts and scalar ops (differentiable).
import { backendOf, type BinaryOp } from '../backend/backend.js';
import { beginNode, linkOutputs, needsGrad } from '../autograd/tape.js';
import { markRecomputable } from '../autograd/recompute.js';
import type { DType } from '../tensor/dtype.js';
import { emptyTensor, type Shape, type Tensor } from '../tensor/tensor.js';
import { broadcastView, permuteView } from './shape.js';

export function broadcastShape(a: Shape, b: Shape): number[] {
  const rank = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1, db = b[b.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) throw new Error(`internal: shapes [${a}] and [${b}] do not broadcast`);
    out.push(Math.max(da, db));
  }
  return out;
}

/** Sums g (of a broadcast shape) back down to shape: the gradient of broadcasting. */
export function sumToShape(g: Tensor, shape: Shape): Tensor {
  const backend = backendOf(g);
  const lead = g.rank - shape.length;
  const reduced: number[] = [], kept: number[] = [];
  g.shape.forEach((d, i) => {
    const target = i < lead ? 1 : shape[i - lead]!;
    if (target === 1 && d !== 1) reduced.push(i); else kept.push(i);
  });
  if (reduced.length === 0) return g.view(shape, shapeStrides(g, lead), g.offset);
  const perm = [...kept, ...reduced];
  const moved = permuteView(g, perm);
  const keptSize = kept.reduce((n, i) => n * g.shape[i]!, 1);
  const flat = emptyTensor(backend, moved.shape, g.dtype);
  backend.copy(flat, moved);
  moved.dispose();
  const rows = flat.view([keptSize, flat.size / keptSize], [flat.size / keptSize, 1], 0);
  const out = emptyTensor(backend, shape, g.dtype);
  backend.sumLastDim(out, rows);
  rows.dispose(); flat.dispose();
  return out;
}

function shapeStrides(g: Tensor, lead: number): number[] { return g.strides.slice(lead); }

function binaryOp(op: BinaryOp, a: Tensor, b: Tensor, outDtype?: DType): Tensor {
  const backend = backendOf(a);
  const shape = broadcastShape(a.shape, b.shape);
  const dtype = outDtype ?? (a.dtype === b.dtype ? a.dtype : 'f32');
  const out = emptyTensor(backend, shape, dtype);
  const av = broadcastView(a, shape), bv = broadcastView(b, shape);
  backend.binary(op, out, av, bv);
  av.dispose(); bv.dispose();
  return out;
}

function raw(op: BinaryOp, a: Tensor, b: Tensor, dtype: DType): Tensor { return binaryOp(op, a, b, dtype); }

export function add(a: Tensor, b: Tensor): Tensor {
  const out = binaryOp('add', a, b);
  const node = beginNode('add', [a, b], 1);
  if (node) node.rule = ([g]) => [sumToShape(g!, a.shape), sumToShape(g!, b.shape)];
  linkOutputs(node, [out]);
  return out;
}

export function sub(a: Tensor, b: Tensor): Tensor {
  const out = binaryOp('sub', a, b);
  const node = beginNode('sub', [a, b], 1);
  if (node) {
    node.rule = ([g]) => {
      const gb = sumToShape(g!, b.shape);
      const neg = emptyTensor(backendOf(gb), gb.shape, gb.dtype);
      backendOf(gb).unary('neg', neg, gb);
      gb.dispose();
      return [sumToShape(g!, a.shape), neg];
    };
  }
  linkOutputs(node, [out]);
  return out;
}

export function mul(a: Tensor, b: Tensor): Tensor {
  const out = binaryOp('mul', a, b);
  const node = beginNode('mul', [a, b], 1);
  if (node) {
    const sa = node.save(a), sb = node.save(b);
    node.rule = ([g]) => {
      const ga = raw('mul', g!, sb, a.dtype), gb = raw('mul', g!, sa, b.dtype);
      const ra = sumToShape(ga, a.shape), rb = sumToShape(gb, b.shape);
      ga.dispose(); gb.dispose();
      return [ra, rb];
    };
  }
  linkOutputs(node, [out]);
  return out;
}

export function div(a: Tensor, b: Tensor): Tensor {
  const out = binaryOp('div', a, b);
  const node = beginNode('div', [a, b], 1);
  if (node) {
    const sb = node.save(b), so = node.save(out);
    node.rule = ([g]) => {
      const ga = raw('div', g!, sb, a.dtype);
      const t = raw('mul', g!, so, 'f32');
      const gbFull = raw('div', t, sb, b.dtype);
      t.dispose();
      const neg = emptyTensor(backendOf(gbFull), gbFull.shape, gbFull.dtype);
      backendOf(gbFull).unary('neg', neg, gbFull);
      gbFull.dispose();
      const ra = sumToShape(ga, a.shape), rb = sumToShape(neg, b.shape);
      ga.dispose(); neg.dispose();
      return [ra, rb];
    };
  }
  linkOutputs(node, [out]);
  return out;
}

/** x·c for a host scalar c. */
export function scale(x: Tensor, c: number): Tensor {
  const backend = backendOf(x);
  const out = emptyTensor(backend, x.shape, x.dtype);
  backend.unary('scale', out, x, c);
  const node = beginNode('scale', [x], 1);
  if (node) {
    node.rule = ([g]) => {
      const gx = emptyTensor(backend, g!.shape, x.dtype);
      backend.unary('scale', gx, g!, c);
      return [gx];
    };
  }
  linkOutputs(node, [out]);
  return out;
}

/**
 * x converted to dtype (differentiable: the gradient is converted back). A widening cast (the
 * router's f32 copy of its bf16 input) is recomputed from x when a later op saved it for backward
 * (autograd/recompute.ts): x is kept by other ops anyway, so the wider copy costs nothing between
 * forward and backward.
 */
export function cast(x: Tensor, dtype: DType): Tensor {
  const backend = backendOf(x);
  const out = emptyTensor(backend, x.shape, dtype);
  backend.copy(out, x);
  if (out.bytes > x.bytes && needsGrad(x)) markRecomputable(out, [x], (dst, [src]) => backend.copy(dst, src!), 'copy');
  const node = beginNode('cast', [x], 1);
  if (node) {
    node.rule = ([g]) => {
      const gx = emptyTensor(backend, g!.shape, x.dtype);
      backend.copy(gx, g!);
      return [gx];
    };
  }
  linkOutputs(node, [out]);
  return out;
}
