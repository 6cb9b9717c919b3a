// Launcher of kernels/sum_last_dim.cu: out[r] = Σ_c x[r,c]; one warp per row up to 1024
// columns, one block of 512 threads per row beyond.
import type { Tensor } from '../../../tensor/tensor.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertCount, assertFloat, lastDim, THREADS } from './common.js';
import type { FillLauncher } from './fill.js';

export class SumLastDimLauncher {
  private readonly file: KernelFile;
  private readonly args = new KernelArgs(4);

  constructor(ctx: CudaContext, private readonly fill: FillLauncher) {
    this.file = new KernelFile(ctx, 'sum_last_dim.cu');
  }

  sumLastDim(out: Tensor, x: Tensor): void {
    assertContiguous(out, 'sumLastDim output');
    assertContiguous(x, 'sumLastDim input');
    assertFloat(x, 'sumLastDim input');
    assertFloat(out, 'sumLastDim output');
    const C = lastDim(x), R = C === 0 ? out.size : x.size / C;
    if (R === 0) return;
    if (C === 0) { this.fill.fill(out, 0); return; }
    assertCount(x.size, 'sumLastDim');
    const args = this.args.ptr(0, devicePtr(out)).ptr(1, devicePtr(x)).i32(2, R).i32(3, C);
    if (C <= 1024) {
      const rowsPerBlock = THREADS / 32;
      this.file.kernel(`sum_rows_warp_${out.dtype}_${x.dtype}`).launch([Math.ceil(R / rowsPerBlock), 1, 1], [THREADS, 1, 1], 0, args);
    } else {
      this.file.kernel(`sum_rows_block_${out.dtype}_${x.dtype}`).launch([R, 1, 1], [512, 1, 1], 0, args);
    }
  }
}
