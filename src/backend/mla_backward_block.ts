// Backend.mlaAttentionBackwardBlock from the whole-block backward, for the backends and kernel
// sets with no accumulating kernel of their own (the CPU oracle, the mma.sync and generic CUDA
// kernels): the block's dq is computed whole into a temporary, brought to the accumulator's
// units (1/scale) and added into its rows. The Hopper kernels add straight into the accumulator
// (ops/mla_attention.ts, backwardBlock).
import type { AttentionOptions, Backend, MlaBlockEnds } from './backend.js';
import { tidy } from '../tensor/scope.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

export function mlaBackwardBlockByWhole(
  be: Backend, dqAcc: Tensor, qFrom: number, grads: { dkNope: Tensor; dkPe: Tensor; dv: Tensor },
  dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, o: Tensor, lse: Tensor, opts: AttentionOptions,
  ends: MlaBlockEnds = {},
): void {
  const [B, Sq, H, Dn] = qNope.shape as [number, number, number, number];
  const Dr = qPe.shape[3]!, W = Dn + Dr, L = dqAcc.shape[1]!;
  if (dqAcc.dtype !== 'f32' || dqAcc.rank !== 4 || dqAcc.shape[0] !== B || dqAcc.shape[2] !== H || dqAcc.shape[3] !== W || !dqAcc.isContiguous()) {
    throw new Error(`mlaAttentionBackwardBlock: dqAcc must be a contiguous f32 [${B},L,${H},${W}], got ${dqAcc.dtype} [${dqAcc.shape}]`);
  }
  checkBlockRows(qFrom, Sq, L, ends);
  tidy(() => {
    if (ends.overwrite) be.fill(dqAcc, 0);
    const dqNope = emptyTensor(be, qNope.shape, qNope.dtype), dqPe = emptyTensor(be, qPe.shape, qPe.dtype);
    be.mlaAttentionBackward({ dqNope, dqPe, ...grads }, dout, qNope, qPe, kNope, kPe, v, o, lse, opts);
    // The block's dq as [B,Sq,H,W] f32 in the accumulator's units.
    const part = emptyTensor(be, [B, Sq, H, W], 'f32');
    const cols = (t: Tensor, from: number, width: number) => t.view([B, Sq, H, width], t.strides, t.offset + from);
    be.copy(cols(part, 0, Dn), dqNope);
    be.copy(cols(part, Dn, Dr), dqPe);
    be.unary('scale', part, part, 1 / opts.scale);
    // Rows qFrom.. of every batch row: contiguous when they are the whole length or B = 1.
    const rows = dqAcc.view([B, Sq, H, W], dqAcc.strides, dqAcc.offset + qFrom * H * W);
    if (rows.isContiguous()) {
      be.binary('add', rows, rows, part);
    } else {
      const sum = emptyTensor(be, [B, Sq, H, W], 'f32');
      be.binary('add', sum, rows, part);
      be.copy(rows, sum);
    }
    if (ends.finish) {
      const all = (from: number, width: number) => dqAcc.view([B, L, H, width], dqAcc.strides, dqAcc.offset + from);
      be.unary('scale', ends.finish.dqNope, all(0, Dn), opts.scale);
      be.unary('scale', ends.finish.dqPe, all(Dn, Dr), opts.scale);
    }
  });
}

/** Where a block's Sq query rows sit in an accumulator of L, and what MlaBlockEnds needs: shared by every implementation. */
export function checkBlockRows(qFrom: number, Sq: number, L: number, ends: MlaBlockEnds): void {
  if (!(Number.isInteger(qFrom) && qFrom >= 0 && qFrom + Sq <= L)) {
    throw new Error(`mlaAttentionBackwardBlock: query rows ${qFrom}..${qFrom + Sq - 1} of the block lie outside the accumulator's ${L}`);
  }
  if (ends.overwrite && (qFrom !== 0 || Sq !== L)) {
    throw new Error(`mlaAttentionBackwardBlock: overwrite needs a block over all ${L} rows of the accumulator, got rows ${qFrom}..${qFrom + Sq - 1}`);
  }
}
