// Launcher of kernels/slot_rows.cu: the MoE combine as a per-token sum over its k slots' rows
// (one block per token) and its fused backward (one block per row: the row's gradient and its
// router weight's), with no atomics and no f32 [N, D] workspace.
import type { Tensor } from '../../../tensor/tensor.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertCount, assertFloat, lastDim, roundUp, THREADS } from './common.js';

/** SLOT_MAX_K: the most slots per token the forward's ranking warp takes (≤ 32). */
export const SLOT_ROWS_DEFINES = { SLOT_MAX_K: 32 } as const;

/** A block per row: one 8-element column per thread up to THREADS, at least one warp (the forward's ranking warp). */
function rowThreads(D: number): number {
  return Math.min(THREADS, Math.max(32, roundUp(Math.ceil(D / 8), 32)));
}

function assertWeights(weights: Tensor | null, M: number, what: string): void {
  if (!weights) return;
  assertContiguous(weights, `${what} weights`);
  if (weights.dtype !== 'f32' || weights.size !== M) throw new Error(`internal: ${what} weights ${weights}, expected f32 with ${M} entries`);
}

export class SlotRowsLauncher {
  private readonly file: KernelFile;
  private readonly fwdArgs = new KernelArgs(7);
  private readonly bwdArgs = new KernelArgs(8);

  constructor(ctx: CudaContext) {
    this.file = new KernelFile(ctx, 'slot_rows.cu', SLOT_ROWS_DEFINES);
  }

  sumSlotRows(out: Tensor, rows: Tensor, rowOfSlot: Tensor, weights: Tensor | null): void {
    for (const [t, what] of [[out, 'out'], [rows, 'rows'], [rowOfSlot, 'rowOfSlot']] as const) assertContiguous(t, `sumSlotRows ${what}`);
    if (rowOfSlot.dtype !== 'i32') throw new Error(`internal: sumSlotRows rowOfSlot is ${rowOfSlot.dtype}, expected i32`);
    assertFloat(out, 'sumSlotRows out');
    assertFloat(rows, 'sumSlotRows rows');
    const D = lastDim(out), N = D === 0 ? 0 : out.size / D, M = D === 0 ? 0 : rows.size / D;
    if (lastDim(rows) !== D) throw new Error(`internal: sumSlotRows rows ${rows} into ${out}`);
    assertWeights(weights, M, 'sumSlotRows');
    if (N === 0 || D === 0) return;
    const k = rowOfSlot.size / N;
    if (!Number.isInteger(k) || k > SLOT_ROWS_DEFINES.SLOT_MAX_K) {
      throw new Error(`internal: sumSlotRows with ${rowOfSlot.size} slots for ${N} tokens (k must be a whole number ≤ ${SLOT_ROWS_DEFINES.SLOT_MAX_K})`);
    }
    assertCount(Math.max(N, M) * D, 'sumSlotRows');
    const args = this.fwdArgs.ptr(0, devicePtr(out)).ptr(1, devicePtr(rows)).ptr(2, devicePtr(rowOfSlot)).ptr(3, weights ? devicePtr(weights) : 0n)
      .i32(4, M).i32(5, D).i32(6, k);
    this.file.kernel(`sum_slot_rows_${out.dtype}_${rows.dtype}`).launch([N, 1, 1], [rowThreads(D), 1, 1], 0, args);
  }

  sumSlotRowsBackward(drows: Tensor | null, dweights: Tensor | null, dout: Tensor, rows: Tensor | null, tokenOfRow: Tensor, weights: Tensor | null): void {
    for (const [t, what] of [[drows, 'drows'], [dweights, 'dweights'], [dout, 'dout'], [rows, 'rows'], [tokenOfRow, 'tokenOfRow']] as const) {
      if (t) assertContiguous(t, `sumSlotRowsBackward ${what}`);
    }
    if (tokenOfRow.dtype !== 'i32') throw new Error(`internal: sumSlotRowsBackward tokenOfRow is ${tokenOfRow.dtype}, expected i32`);
    assertFloat(dout, 'sumSlotRowsBackward dout');
    const D = lastDim(dout), N = D === 0 ? 0 : dout.size / D, M = tokenOfRow.size;
    assertWeights(weights, M, 'sumSlotRowsBackward');
    if (drows) { assertFloat(drows, 'sumSlotRowsBackward drows'); if (drows.size !== M * D) throw new Error(`internal: sumSlotRowsBackward drows ${drows} for ${M} rows of ${D}`); }
    if (dweights) {
      if (!rows || rows.size !== M * D) throw new Error(`internal: sumSlotRowsBackward needs rows [${M}, ${D}] for dweights, got ${rows}`);
      assertFloat(rows, 'sumSlotRowsBackward rows');
      if (dweights.dtype !== 'f32' || dweights.size !== M) throw new Error(`internal: sumSlotRowsBackward dweights ${dweights}, expected f32 with ${M} entries`);
    }
    if (M === 0 || (!drows && !dweights)) return;
    assertCount(Math.max(N, M) * Math.max(D, 1), 'sumSlotRowsBackward');
    const args = this.bwdArgs.ptr(0, drows ? devicePtr(drows) : 0n).ptr(1, dweights ? devicePtr(dweights) : 0n).ptr(2, devicePtr(dout))
      .ptr(3, dweights ? devicePtr(rows!) : 0n).ptr(4, devicePtr(tokenOfRow)).ptr(5, weights ? devicePtr(weights) : 0n).i32(6, N).i32(7, D);
    // A null output's dtype does not matter: its pointer is never read.
    const name = `sum_slot_rows_bwd_${drows?.dtype ?? dout.dtype}_${dout.dtype}_${(dweights ? rows!.dtype : null) ?? dout.dtype}`;
    this.file.kernel(name).launch([M, 1, 1], [rowThreads(D), 1, 1], 0, args);
  }
}
