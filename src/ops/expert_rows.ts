// The MoE's routed rows when every token has exactly k slots: dispatch (token rows copied to
// their expert-sorted rows) and combine (each token's k expert outputs, router-weighted, summed
// back into its row), both differentiable, weights included. They exist because the general
// row ops (rows.ts) move rows the other way through an f32 [N, D] buffer filled with zeros,
// scatter-added into with atomics and rounded by a copy; here the sum runs per token over its
// own k rows, found through rowOfSlot (the inverse of the expert order, routing.ts), so it is
// one pass with one rounding, and deterministic. The combine's backward is one fused pass too:
// each row's gradient and its router weight's gradient from one read of the token's gradient.
//
// Numerics: a token's terms are added in f32 in increasing row order, which is the order the
// scatter-add over sorted rows adds them in, so on the CPU both ops are bit for bit the
// gatherRows/scatterAddRows composition they replace. The CUDA kernels use that order too
// (fused multiply-adds), where the atomics they replace added in any order: a GPU loss may move
// from the old path's by bf16/f32 rounding order only, and is now the same on every run.
//
// Legend: N tokens, k slots per token, M rows (the owned slots, grouped by expert), D width.
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs, needsGrad } from '../autograd/tape.js';
import { markRecomputable } from '../autograd/recompute.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

function checkSlots(rowOfSlot: Tensor, N: number, what: string): void {
  if (rowOfSlot.dtype !== 'i32' || (N > 0 && rowOfSlot.size % N !== 0)) {
    throw new Error(`internal: ${what}: rowOfSlot ${rowOfSlot} is not i32 [N·k] for N = ${N}`);
  }
}

/**
 * xs[m] = x[tokenOfRow[m]] for x [N, D], tokenOfRow i32 [M] → [M, D]; rowOfSlot i32 [N·k] (each
 * slot's row or −1) gives the backward dx[n] = Σ over n's slots of dxs[row], with no atomics.
 */
export function dispatchRows(x: Tensor, tokenOfRow: Tensor, rowOfSlot: Tensor): Tensor {
  const backend = backendOf(x);
  const [N, D] = x.shape as [number, number];
  checkSlots(rowOfSlot, N, 'dispatchRows');
  const M = tokenOfRow.size;
  const out = emptyTensor(backend, [M, D], x.dtype);
  backend.gatherRows(out, x, tokenOfRow, null);
  // As rows.ts's gatherRows: k rows per token are recomputed from x when an op saved them for
  // backward (autograd/recompute.ts), one gather more instead of M rows kept.
  if (M >= N && needsGrad(x)) markRecomputable(out, [x, tokenOfRow], (dst, [xs, ix]) => backend.gatherRows(dst, xs!, ix!, null), 'copy');
  const node = beginNode('dispatchRows', [x], 1);
  if (node) {
    const sr = node.save(rowOfSlot);
    node.rule = ([g]) => {
      const dx = emptyTensor(backend, x.shape, x.dtype);
      backend.sumSlotRows(dx, g!, sr, null);
      return [dx];
    };
  }
  linkOutputs(node, [out]);
  return out;
}

/**
 * out[n] = Σ over n's slots (rowOfSlot i32 [N·k], −1 for a slot without a row) of
 * weights[row]·ys[row], for ys [M, D] and weights f32 [M, 1] → [N, D] in ys's dtype. tokenOfRow
 * i32 [M] is the backward's: dys[m] = weights[m]·dout[tokenOfRow[m]] and
 * dweights[m] = dout[tokenOfRow[m]]·ys[m], in one pass.
 */
export function combineRows(ys: Tensor, tokenOfRow: Tensor, rowOfSlot: Tensor, weights: Tensor, N: number): Tensor {
  const backend = backendOf(ys);
  const [M, D] = ys.shape as [number, number];
  checkSlots(rowOfSlot, N, 'combineRows');
  if (weights.dtype !== 'f32' || weights.size !== M || tokenOfRow.size !== M) {
    throw new Error(`internal: combineRows of ${M} rows with weights ${weights} and tokenOfRow ${tokenOfRow}`);
  }
  const out = emptyTensor(backend, [N, D], ys.dtype);
  backend.sumSlotRows(out, ys, rowOfSlot, weights);
  const node = beginNode('combineRows', [ys, weights], 1);
  if (node) {
    const st = node.save(tokenOfRow);
    const sw = needsGrad(ys) ? node.save(weights) : null;
    const sy = needsGrad(weights) ? node.save(ys) : null;
    node.rule = ([g]) => {
      const dys = sw ? emptyTensor(backend, ys.shape, ys.dtype) : null;
      const dw = sy ? emptyTensor(backend, weights.shape, 'f32') : null;
      backend.sumSlotRowsBackward(dys, dw, g!, sy, st, sw);
      return [dys, dw];
    };
  }
  linkOutputs(node, [out]);
  return out;
}
