// Views and layout changes: reshape, permute, contiguous copies, splitting the last dimension.
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs } from '../autograd/tape.js';
import { contiguousStrides, emptyTensor, numel, type Shape, type Tensor } from '../tensor/tensor.js';

/** A copy of x in row-major layout (differentiable). */
export function contiguous(x: Tensor): Tensor {
  const backend = backendOf(x);
  const out = emptyTensor(backend, x.shape, x.dtype);
  backend.copy(out, x);
  const node = beginNode('contiguous', [x], 1);
  if (node) {
    node.rule = ([g]) => [g!.view(g!.shape, g!.strides, g!.offset)];
  }
  linkOutputs(node, [out]);
  return out;
}

/** Same elements, new shape; a view when x is contiguous, else a copy. One dimension may be -1. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const known = shape.filter((d) => d !== -1);
  const inferred = shape.map((d) => (d === -1 ? x.size / numel(known) : d));
  if (numel(inferred) !== x.size || inferred.some((d) => !Number.isInteger(d))) {
    throw new Error(`internal: reshape [${x.shape}] to [${shape}]`);
  }
  const src = x.isContiguous() ? x : contiguous(x);
  const out = src.view(inferred, contiguousStrides(inferred), src.offset);
  const node = beginNode('reshape', [src], 1);
  if (node) {
    const inShape = src.shape;
    node.rule = ([g]) => [reshapeNoGrad(g!, inShape)];
  }
  linkOutputs(node, [out]);
  return out;
}

function reshapeNoGrad(g: Tensor, shape: Shape): Tensor {
  const backend = backendOf(g);
  if (g.isContiguous()) return g.view(shape, contiguousStrides(shape), g.offset);
  const c = emptyTensor(backend, g.shape, g.dtype);
  backend.copy(c, g);
  const v = c.view(shape, contiguousStrides(shape), 0);
  c.dispose();
  return v;
}

/** A view with dimensions reordered: out.shape[i] = x.shape[perm[i]] (differentiable). */
export function permute(x: Tensor, perm: readonly number[]): Tensor {
  const out = permuteView(x, perm);
  const node = beginNode('permute', [x], 1);
  if (node) {
    const inverse = new Array<number>(perm.length);
    perm.forEach((p, i) => { inverse[p] = i; });
    node.rule = ([g]) => [permuteView(g!, inverse)];
  }
  linkOutputs(node, [out]);
  return out;
}

export function permuteView(x: Tensor, perm: readonly number[]): Tensor {
  return x.view(perm.map((p) => x.shape[p]!), perm.map((p) => x.strides[p]!), x.offset);
}

export function transpose(x: Tensor, a: number, b: number): Tensor {
  const perm = x.shape.map((_, i) => i);
  perm[a] = b; perm[b] = a;
  return permute(x, perm);
}

/** A view of x broadcast to shape (stride 0 on new or size-1 dimensions); not differentiable by itself. */
export function broadcastView(x: Tensor, shape: Shape): Tensor {
  const lead = shape.length - x.rank;
  if (lead < 0) throw new Error(`internal: broadcast [${x.shape}] to [${shape}]`);
  const strides = shape.map((d, i) => {
    if (i < lead) return 0;
    const xd = x.shape[i - lead]!;
    if (xd === d) return x.strides[i - lead]!;
    if (xd === 1) return 0;
    throw new Error(`internal: broadcast [${x.shape}] to [${shape}]`);
  });
  return x.view(shape, strides, x.offset);
}

/**
 * Splits the last dimension into pieces of the given widths (differentiable): contiguous copies,
 * or where `views[i]` is set, piece i as a view of x (no copy; x's memory then lives as long as
 * the view). The model keeps q_nope, k_nope and v as views: mlaAttention reads them as they lie
 * in their projections. The backward is the same either way (the pieces' gradients written into
 * one gradient of x).
 */
export function splitLastDim(x: Tensor, widths: readonly number[], views: readonly boolean[] = []): Tensor[] {
  const last = x.rank - 1, D = x.shape[last]!;
  if (widths.reduce((a, b) => a + b, 0) !== D) throw new Error(`internal: split ${D} into [${widths}]`);
  let start = 0;
  const outs = widths.map((w, i) => {
    const shape = [...x.shape.slice(0, last), w];
    const src = x.view(shape, x.strides, x.offset + start * x.strides[last]!);
    start += w;
    if (views[i]) return src;
    const out = emptyTensor(backendOf(x), shape, x.dtype);
    backendOf(x).copy(out, src);
    src.dispose();
    return out;
  });
  const node = beginNode('splitLastDim', [x], widths.length);
  if (node) {
    const shape = x.shape, dtype = x.dtype, backend = backendOf(x);
    node.rule = (gs) => {
      const gx = emptyTensor(backend, shape, dtype);
      if (gs.some((g) => !g)) backend.fill(gx, 0);
      let at = 0;
      gs.forEach((g, i) => {
        const w = widths[i]!;
        const dst = gx.view([...shape.slice(0, last), w], gx.strides, at);
        if (g) backend.copy(dst, g);
        dst.dispose();
        at += w;
      });
      return [gx];
    };
  }
  linkOutputs(node, outs);
  return outs;
}
