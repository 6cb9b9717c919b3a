// A CPU backend that enforces the Backend contract's layout rule (backend.ts: "Inputs are
// contiguous unless the parameter says view"). The CPU backend itself tolerates views almost
// everywhere, so an op or gradient rule that hands a strided view to a method that requires a
// contiguous tensor would pass every CPU test and then read garbage on the GPU. Tests that run on
// this backend catch that on a machine without a GPU.
import { headRowStride } from '../../src/backend/mla_head_rows.js';
import { CpuBackend } from '../../src/backend/cpu/cpu_backend.js';
import type { AttentionOptions, MatmulOptions } from '../../src/backend/backend.js';
import type { TensorList } from '../../src/backend/tensor_list.js';
import type { Tensor } from '../../src/tensor/tensor.js';

function dense(method: string, ...named: [string, Tensor | null][]): void {
  for (const [name, t] of named) {
    if (t && !t.isContiguous()) {
      throw new Error(`contract: ${method}(${name}) got a non-contiguous view (shape [${t.shape}], strides [${t.strides}])`);
    }
  }
}

/** Contiguous, or a view of a wider [B,S,H,rs] tensor: what mlaAttention's q_nope, k_nope and v may be (backend/mla_head_rows.ts). */
function headRows(method: string, ...named: [string, Tensor][]): void {
  for (const [name, t] of named) {
    if (headRowStride(t) === null) {
      throw new Error(`contract: ${method}(${name}) got a view the kernels cannot read (shape [${t.shape}], strides [${t.strides}])`);
    }
  }
}

export class StrictCpuBackend extends CpuBackend {
  override sumSquaresMulti(out: Tensor, list: TensorList<Tensor>): void {
    dense('sumSquaresMulti', ...list.entries.map((t, i): [string, Tensor] => [`list[${i}]`, t])); super.sumSquaresMulti(out, list);
  }
  override sumLastDim(out: Tensor, x: Tensor): void { dense('sumLastDim', ['out', out], ['x', x]); super.sumLastDim(out, x); }
  override matmul(out: Tensor, a: Tensor, b: Tensor, opts: MatmulOptions): void { dense('matmul', ['out', out], ['a', a], ['b', b]); super.matmul(out, a, b, opts); }
  override groupedLinear(out: Tensor, x: Tensor, weights: readonly Tensor[], offsets: Tensor): void {
    dense('groupedLinear', ['out', out], ['x', x], ['offsets', offsets], ...weights.map((w, e): [string, Tensor] => [`weights[${e}]`, w]));
    super.groupedLinear(out, x, weights, offsets);
  }
  override groupedLinearBackwardData(dx: Tensor, dy: Tensor, weights: readonly Tensor[], offsets: Tensor): void {
    dense('groupedLinearBackwardData', ['dx', dx], ['dy', dy], ['offsets', offsets], ...weights.map((w, e): [string, Tensor] => [`weights[${e}]`, w]));
    super.groupedLinearBackwardData(dx, dy, weights, offsets);
  }
  override groupedLinearBackwardDataPair(dx: Tensor, dy1: Tensor, dy2: Tensor, w1: readonly Tensor[], w2: readonly Tensor[], offsets: Tensor): void {
    dense('groupedLinearBackwardDataPair', ['dx', dx], ['dy1', dy1], ['dy2', dy2], ['offsets', offsets],
      ...[...w1, ...w2].map((w, i): [string, Tensor] => [i < w1.length ? `w1[${i}]` : `w2[${i - w1.length}]`, w]));
    super.groupedLinearBackwardDataPair(dx, dy1, dy2, w1, w2, offsets);
  }
  override groupedLinearWeightGrad(dweights: readonly Tensor[], dy: Tensor, x: Tensor, offsets: Tensor, beta: 0 | 1 = 1, squares?: Tensor): boolean {
    dense('groupedLinearWeightGrad', ['dy', dy], ['x', x], ['offsets', offsets], ...dweights.map((w, e): [string, Tensor] => [`dweights[${e}]`, w]));
    return super.groupedLinearWeightGrad(dweights, dy, x, offsets, beta, squares);
  }
  override groupedLinearWeightGradPair(dw1: readonly Tensor[], dw2: readonly Tensor[], dy1: Tensor, dy2: Tensor, x: Tensor, offsets: Tensor,
                                       beta: 0 | 1 = 1, squares?: Tensor): boolean {
    dense('groupedLinearWeightGradPair', ['dy1', dy1], ['dy2', dy2], ['x', x], ['offsets', offsets],
      ...[...dw1, ...dw2].map((w, e): [string, Tensor] => [`dweights[${e}]`, w]));
    return super.groupedLinearWeightGradPair(dw1, dw2, dy1, dy2, x, offsets, beta, squares);
  }
  override rmsNorm(y: Tensor, rstd: Tensor, x: Tensor, w: Tensor, eps: number): void { dense('rmsNorm', ['x', x], ['w', w]); super.rmsNorm(y, rstd, x, w, eps); }
  override rmsNormBackward(dx: Tensor, dw: Tensor, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor): void {
    dense('rmsNormBackward', ['dy', dy], ['x', x], ['w', w], ['rstd', rstd]); super.rmsNormBackward(dx, dw, dy, x, w, rstd);
  }
  override rope(out: Tensor, x: Tensor, cos: Tensor, sin: Tensor): void { dense('rope', ['x', x], ['cos', cos], ['sin', sin]); super.rope(out, x, cos, sin); }
  override ropeBackward(dx: Tensor, dout: Tensor, cos: Tensor, sin: Tensor): void { dense('ropeBackward', ['dout', dout]); super.ropeBackward(dx, dout, cos, sin); }
  override swiglu(out: Tensor, gate: Tensor, up: Tensor): void { dense('swiglu', ['gate', gate], ['up', up]); super.swiglu(out, gate, up); }
  override swigluBackward(dgate: Tensor, dup: Tensor, dout: Tensor, gate: Tensor, up: Tensor): void {
    dense('swigluBackward', ['dout', dout], ['gate', gate], ['up', up]); super.swigluBackward(dgate, dup, dout, gate, up);
  }
  override embedding(out: Tensor, ids: Tensor, weight: Tensor): void { dense('embedding', ['ids', ids], ['weight', weight]); super.embedding(out, ids, weight); }
  override embeddingBackward(dweight: Tensor, ids: Tensor, dout: Tensor, squares?: Tensor): boolean {
    dense('embeddingBackward', ['ids', ids], ['dout', dout]);
    return super.embeddingBackward(dweight, ids, dout, squares);
  }
  override crossEntropy(loss: Tensor, lse: Tensor, logits: Tensor, labels: Tensor): void { dense('crossEntropy', ['logits', logits], ['labels', labels]); super.crossEntropy(loss, lse, logits, labels); }
  override crossEntropyBackward(dlogits: Tensor, logits: Tensor, labels: Tensor, lse: Tensor, dloss: Tensor, scale: number): void {
    dense('crossEntropyBackward', ['logits', logits], ['labels', labels], ['lse', lse], ['dloss', dloss]);
    super.crossEntropyBackward(dlogits, logits, labels, lse, dloss, scale);
  }
  override crossEntropyWithGrad(loss: Tensor, lse: Tensor, dlogits: Tensor, logits: Tensor, labels: Tensor, scale: number): void {
    dense('crossEntropyWithGrad', ['logits', logits], ['labels', labels], ['dlogits', dlogits]);
    super.crossEntropyWithGrad(loss, lse, dlogits, logits, labels, scale);
  }
  override softmax(out: Tensor, x: Tensor): void { dense('softmax', ['x', x]); super.softmax(out, x); }
  override softmaxBackward(dx: Tensor, dy: Tensor, y: Tensor): void { dense('softmaxBackward', ['dy', dy], ['y', y]); super.softmaxBackward(dx, dy, y); }
  override topk(values: Tensor, indices: Tensor, x: Tensor, k: number): void { dense('topk', ['x', x]); super.topk(values, indices, x, k); }
  override gatherRows(out: Tensor, x: Tensor, idx: Tensor, weights: Tensor | null): void {
    dense('gatherRows', ['x', x], ['idx', idx], ['weights', weights]); super.gatherRows(out, x, idx, weights);
  }
  override scatterAddRows(out: Tensor, src: Tensor, idx: Tensor, weights: Tensor | null): void {
    dense('scatterAddRows', ['out', out], ['src', src], ['idx', idx], ['weights', weights]); super.scatterAddRows(out, src, idx, weights);
  }
  override expertOrderInverse(rowOfSlot: Tensor, order: Tensor, first: number, count: number): void {
    dense('expertOrderInverse', ['rowOfSlot', rowOfSlot], ['order', order]); super.expertOrderInverse(rowOfSlot, order, first, count);
  }
  override sumSlotRows(out: Tensor, rows: Tensor, rowOfSlot: Tensor, weights: Tensor | null): void {
    dense('sumSlotRows', ['out', out], ['rows', rows], ['rowOfSlot', rowOfSlot], ['weights', weights]); super.sumSlotRows(out, rows, rowOfSlot, weights);
  }
  override sumSlotRowsBackward(drows: Tensor | null, dweights: Tensor | null, dout: Tensor, rows: Tensor | null, tokenOfRow: Tensor, weights: Tensor | null): void {
    dense('sumSlotRowsBackward', ['drows', drows], ['dweights', dweights], ['dout', dout], ['rows', rows], ['tokenOfRow', tokenOfRow], ['weights', weights]);
    super.sumSlotRowsBackward(drows, dweights, dout, rows, tokenOfRow, weights);
  }
  override mlaAttention(o: Tensor, lse: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, opts: AttentionOptions): void {
    dense('mlaAttention', ['qPe', qPe], ['kPe', kPe]);
    headRows('mlaAttention', ['qNope', qNope], ['kNope', kNope], ['v', v]);
    super.mlaAttention(o, lse, qNope, qPe, kNope, kPe, v, opts);
  }
  override mlaAttentionBackward(
    grads: { dqNope: Tensor; dqPe: Tensor; dkNope: Tensor; dkPe: Tensor; dv: Tensor },
    dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, o: Tensor, lse: Tensor, opts: AttentionOptions,
  ): void {
    dense('mlaAttentionBackward', ['dout', dout], ['qPe', qPe], ['kPe', kPe], ['o', o], ['lse', lse]);
    headRows('mlaAttentionBackward', ['qNope', qNope], ['kNope', kNope], ['v', v]);
    super.mlaAttentionBackward(grads, dout, qNope, qPe, kNope, kPe, v, o, lse, opts);
  }
}
