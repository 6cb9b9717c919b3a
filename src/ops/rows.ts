// Row movement for expert dispatch: gather rows by index (optionally weighted), scatter-add
// them back, and split/concatenate row blocks, all differentiable (weights included).
import { beginNode, linkOutputs, needsGrad } from '../autograd/tape.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

/** Per-row dot products of two [M, D] tensors → [M, 1] f32 (used for weight gradients). */
function rowDots(a: Tensor, b: Tensor): Tensor {
  const prod = emptyTensor(a.backend, a.shape, 'f32');
  a.backend.binary('mul', prod, a, b);
  const out = emptyTensor(a.backend, [a.shape[0]!, 1], 'f32');
  a.backend.sumLastDim(out, prod);
  prod.dispose();
  return out;
}

/** out[m] = w[m]·x[idx[m]]; x [N, D], idx i32 [M], weights f32 [M, 1] or null → [M, D]. */
export function gatherRows(x: Tensor, idx: Tensor, weights: Tensor | null): Tensor {
  const D = x.shape[1]!, M = idx.size;
  const out = emptyTensor(x.backend, [M, D], x.dtype);
  x.backend.gatherRows(out, x, idx, weights);
  const inputs = weights ? [x, weights] : [x];
  const node = beginNode('gatherRows', inputs, 1);
  if (node) {
    const si = node.save(idx), sw = weights ? node.save(weights) : null;
    const sx = weights && needsGrad(weights) ? node.save(x) : null;
    node.rule = ([g]) => {
      let dx: Tensor | null = null;
      if (needsGrad(x)) {
        const acc = emptyTensor(x.backend, x.shape, 'f32');
        x.backend.fill(acc, 0);
        x.backend.scatterAddRows(acc, g!, si, sw);
        if (x.dtype === 'f32') dx = acc;
        else { dx = emptyTensor(x.backend, x.shape, x.dtype); x.backend.copy(dx, acc); acc.dispose(); }
      }
      let dw: Tensor | null = null;
      if (sx) {
        const rows = emptyTensor(x.backend, [M, D], x.dtype);
        x.backend.gatherRows(rows, sx, si, null);
        dw = rowDots(rows, g!);
        rows.dispose();
      }
      return weights ? [dx, dw] : [dx];
    };
  }
  linkOutputs(node, [out]);
  return out;
}

/** out [N, D] with out[idx[m]] += w[m]·src[m]; accumulated in f32, returned as src's dtype. */
export function scatterAddRows(src: Tensor, idx: Tensor, weights: Tensor | null, N: number): Tensor {
  const D = src.shape[1]!;
  const acc = emptyTensor(src.backend, [N, D], 'f32');
  src.backend.fill(acc, 0);
  src.backend.scatterAddRows(acc, src, idx, weights);
  let out = acc;
  if (src.dtype !== 'f32') {
    out = emptyTensor(src.backend, [N, D], src.dtype);
    src.backend.copy(out, acc);
    acc.dispose();
  }
  const inputs = weights ? [src, weights] : [src];
  const node = beginNode('scatterAddRows', inputs, 1);
  if (node) {
    const si = node.save(idx), sw = weights ? node.save(weights) : null;
    const ss = weights && needsGrad(weights) ? node.save(src) : null;
    node.rule = ([g]) => {
      let dsrc: Tensor | null = null;
      if (needsGrad(src)) {
        dsrc = emptyTensor(src.backend, src.shape, src.dtype);
        src.backend.gatherRows(dsrc, g!, si, sw);
      }
      let dw: Tensor | null = null;
      if (ss) {
        const rows = emptyTensor(src.backend, src.shape, g!.dtype);
        src.backend.gatherRows(rows, g!, si, null);
        dw = rowDots(rows, ss);
        rows.dispose();
      }
      return weights ? [dsrc, dw] : [dsrc];
    };
  }
  linkOutputs(node, [out]);
  return out;
}

/** Views of consecutive row blocks of x [R, D] with the given row counts (differentiable). */
export function splitRows(x: Tensor, counts: readonly number[]): Tensor[] {
  const D = x.shape[1]!;
  let at = 0;
  const outs = counts.map((c) => { const v = x.view([c, D], [D, 1], x.offset + at * D); at += c; return v; });
  const node = beginNode('splitRows', [x], counts.length);
  if (node) {
    node.rule = (gs) => {
      const gx = emptyTensor(x.backend, x.shape, x.dtype);
      if (gs.some((g) => !g)) x.backend.fill(gx, 0);
      let row = 0;
      gs.forEach((g, i) => {
        const c = counts[i]!;
        if (g && c > 0) { const dst = gx.view([c, D], [D, 1], row * D); x.backend.copy(dst, g); dst.dispose(); }
        row += c;
      });
      return [gx];
    };
  }
  linkOutputs(node, outs);
  return outs;
}

/** Stacks [c_i, D] blocks into [Σc_i, D] (differentiable). */
export function concatRows(parts: readonly Tensor[]): Tensor {
  const D = parts[0]!.shape[1]!, R = parts.reduce((n, p) => n + p.shape[0]!, 0);
  const out = emptyTensor(parts[0]!.backend, [R, D], parts[0]!.dtype);
  let row = 0;
  for (const p of parts) {
    const c = p.shape[0]!;
    if (c > 0) { const dst = out.view([c, D], [D, 1], row * D); out.backend.copy(dst, p); dst.dispose(); }
    row += c;
  }
  const node = beginNode('concatRows', parts, 1);
  if (node) {
    node.rule = ([g]) => {
      let r = 0;
      return parts.map((p) => {
        const c = p.shape[0]!;
        const v = g!.view([c, D], [D, 1], g!.offset + r * D);
        r += c;
        return v;
      });
    };
  }
  linkOutputs(node, [out]);
  return out;
}
