// Launcher of kernels/gather_rows.cu: out[m] = (weights ? weights[m] : 1)·x[idx[m]], one block
// per output row (MoE dispatch of tokens to experts), or one thread per element for rows
// narrower than a warp.
import type { Tensor } from '../../../tensor/tensor.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertCount, assertFloat, lastDim, NARROW_ROW, roundUp, THREADS } from './common.js';

export class GatherRowsLauncher {
  private readonly file: KernelFile;
  private readonly args = new KernelArgs(6);
  private readonly narrowArgs = new KernelArgs(7);

  constructor(ctx: CudaContext) {
    this.file = new KernelFile(ctx, 'gather_rows.cu');
  }

  gatherRows(out: Tensor, x: Tensor, idx: Tensor, weights: Tensor | null): void {
    for (const [t, what] of [[out, 'out'], [x, 'x'], [idx, 'idx']] as const) assertContiguous(t, `gatherRows ${what}`);
    if (weights) { assertContiguous(weights, 'gatherRows weights'); assertFloat(weights, 'gatherRows weights'); }
    if (idx.dtype !== 'i32') throw new Error(`internal: gatherRows idx is ${idx.dtype}, expected i32`);
    assertFloat(x, 'gatherRows x');
    assertFloat(out, 'gatherRows output');
    const D = lastDim(x), N = D === 0 ? 0 : x.size / D, M = idx.size;
    if (M === 0 || D === 0) return;
    assertCount(M * D, 'gatherRows');
    const types = `${out.dtype}_${x.dtype}_${weights?.dtype ?? 'f32'}`;
    if (D < NARROW_ROW) {
      // One thread per element (the kernel header says why).
      const total = M * D;
      const args = this.narrowArgs.ptr(0, devicePtr(out)).ptr(1, devicePtr(x)).ptr(2, devicePtr(idx)).ptr(3, weights ? devicePtr(weights) : 0n)
        .i32(4, N).i32(5, D).i64(6, BigInt(total));
      this.file.kernel(`gather_rows_narrow_${types}`).launch([Math.ceil(total / THREADS), 1, 1], [THREADS, 1, 1], 0, args);
      return;
    }
    const args = this.args.ptr(0, devicePtr(out)).ptr(1, devicePtr(x)).ptr(2, devicePtr(idx)).ptr(3, weights ? devicePtr(weights) : 0n)
      .i32(4, N).i32(5, D);
    this.file.kernel(`gather_rows_${types}`).launch([M, 1, 1], [Math.min(THREADS, roundUp(D, 32)), 1, 1], 0, args);
  }
}
