// Row movement for expert dispatch: gather rows by index (optionally weighted), scatter-add
// them back, and split/concatenate row blocks, all differentiable (weights included).
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs, needsGrad } from '../autograd/tape.js';
import { markRecomputable } from '../autograd/recompute.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

/** Rows per block of gatheredRowDots: its f32 products stay near ROW_DOT_BLOCK_BYTES. */
const ROW_DOT_BLOCK_BYTES = 64 * 2 ** 20;

/**
 * out[m] = Σ_d x[idx[m], d]·b[m, d] → [M, 1] f32 (the gradient of a row's router weight), for x
 * [N, D], idx i32 [M], b [M, D]. Computed in blocks of rows, so the gathered rows and their f32
 * products exist for one block at a time (at M = 49,152 routed rows of D = 2048 they would be
 * 192 MiB and 384 MiB, at the busiest point of the MoE backward); each row's arithmetic is the
 * same whatever the block.
 */
function gatheredRowDots(x: Tensor, idx: Tensor, b: Tensor): Tensor {
  const backend = backendOf(b);
  const [M, D] = b.shape as [number, number];
  const out = emptyTensor(backend, [M, 1], 'f32');
  const R = Math.max(1, Math.min(M, Math.floor(ROW_DOT_BLOCK_BYTES / (4 * Math.max(D, 1)))));
  const rows = emptyTensor(backend, [R, D], x.dtype), prod = emptyTensor(backend, [R, D], 'f32');
  for (let r0 = 0; r0 < M; r0 += R) {
    const n = Math.min(R, M - r0);
    const rv = rows.view([n, D], [D, 1], 0), pv = prod.view([n, D], [D, 1], 0);
    const iv = idx.view([n], [1], idx.offset + r0), bv = b.view([n, D], [D, 1], b.offset + r0 * D), ov = out.view([n], [1], r0);
    backend.gatherRows(rv, x, iv, null);
    backend.binary('mul', pv, rv, bv);
    backend.sumLastDim(ov, pv);
    for (const t of [rv, pv, iv, bv, ov]) t.dispose();
  }
  rows.dispose(); prod.dispose();
  return out;
}

/** out[m] = w[m]·x[idx[m]]; x [N, D], idx i32 [M], weights f32 [M, 1] or null → [M, D]. */
export function gatherRows(x: Tensor, idx: Tensor, weights: Tensor | null): Tensor {
  const backend = backendOf(x);
  const D = x.shape[1]!, M = idx.size;
  const out = emptyTensor(backend, [M, D], x.dtype);
  backend.gatherRows(out, x, idx, weights);
  // Unweighted rows at least as large as x (the MoE's routed rows, k per token) are recomputed
  // from x when a later op saved them for backward (autograd/recompute.ts): one gather more.
  if (!weights && M >= x.shape[0]! && needsGrad(x)) markRecomputable(out, [x, idx], (dst, [xs, ix]) => backend.gatherRows(dst, xs!, ix!, null), 'copy');
  const inputs = weights ? [x, weights] : [x];
  const node = beginNode('gatherRows', inputs, 1);
  if (node) {
    const si = node.save(idx), sw = weights ? node.save(weights) : null;
    const sx = weights && needsGrad(weights) ? node.save(x) : null;
    node.rule = ([g]) => {
      let dx: Tensor | null = null;
      if (needsGrad(x)) {
        const acc = emptyTensor(backend, x.shape, 'f32');
        backend.fill(acc, 0);
        backend.scatterAddRows(acc, g!, si, sw);
        if (x.dtype === 'f32') dx = acc;
        else { dx = emptyTensor(backend, x.shape, x.dtype); backend.copy(dx, acc); acc.dispose(); }
      }
      const dw = sx ? gatheredRowDots(sx, si, g!) : null;
      return weights ? [dx, dw] : [dx];
    };
  }
  linkOutputs(node, [out]);
  return out;
}

/** out [N, D] with out[idx[m]] += w[m]·src[m]; accumulated in f32, returned as src's dtype. */
export function scatterAddRows(src: Tensor, idx: Tensor, weights: Tensor | null, N: number): Tensor {
  const backend = backendOf(src);
  const D = src.shape[1]!;
  const acc = emptyTensor(backend, [N, D], 'f32');
  backend.fill(acc, 0);
  backend.scatterAddRows(acc, src, idx, weights);
  let out = acc;
  if (src.dtype !== 'f32') {
    out = emptyTensor(backend, [N, D], src.dtype);
    backend.copy(out, acc);
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
        dsrc = emptyTensor(backend, src.shape, src.dtype);
        backend.gatherRows(dsrc, g!, si, sw);
      }
      const dw = ss ? gatheredRowDots(g!, si, ss) : null;
      return weights ? [dsrc, dw] : [dsrc];
    };
  }
  linkOutputs(node, [out]);
  return out;
}

/** Views of consecutive row blocks of x [R, D] with the given row counts (differentiable). */
export function splitRows(x: Tensor, counts: readonly number[]): Tensor[] {
  const backend = backendOf(x);
  const D = x.shape[1]!;
  let at = 0;
  const outs = counts.map((c) => { const v = x.view([c, D], [D, 1], x.offset + at * D); at += c; return v; });
  const node = beginNode('splitRows', [x], counts.length);
  if (node) {
    node.rule = (gs) => {
      const gx = emptyTensor(backend, x.shape, x.dtype);
      if (gs.some((g) => !g)) backend.fill(gx, 0);
      let row = 0;
      gs.forEach((g, i) => {
        const c = counts[i]!;
        if (g && c > 0) { const dst = gx.view([c, D], [D, 1], row * D); backend.copy(dst, g); dst.dispose(); }
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
  const out = emptyTensor(backendOf(parts[0]!), [R, D], parts[0]!.dtype);
  let row = 0;
  for (const p of parts) {
    const c = p.shape[0]!;
    if (c > 0) { const dst = out.view([c, D], [D, 1], row * D); backendOf(out).copy(dst, p); dst.dispose(); }
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
