// Launcher of kernels/sum_squares.cu: out[0] (f32) += Σ x² over every element of x (the
// gradient norm): a few hundred blocks, one atomic partial each.
import type { Tensor } from '../../../tensor/tensor.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertFloat, THREADS } from './common.js';

export class SumSquaresLauncher {
  private readonly file: KernelFile;
  private readonly args = new KernelArgs(3);

  constructor(private readonly ctx: CudaContext) {
    this.file = new KernelFile(ctx, 'sum_squares.cu');
  }

  sumSquaresInto(out: Tensor, x: Tensor): void {
    if (out.dtype !== 'f32') throw new Error(`internal: sumSquaresInto output is ${out.dtype}, expected f32`);
    assertContiguous(x, 'sumSquaresInto input');
    assertFloat(x, 'sumSquaresInto input');
    const n = x.size;
    if (n === 0) return;
    const args = this.args.ptr(0, devicePtr(out)).ptr(1, devicePtr(x)).i64(2, BigInt(n));
    // Four elements per thread before the first reduction; at most a few hundred partials.
    const blocks = Math.max(1, Math.min(Math.ceil(n / (THREADS * 4)), this.ctx.smCount * 4));
    this.file.kernel(`sum_squares_${x.dtype}`).launch([blocks, 1, 1], [THREADS, 1, 1], 0, args);
  }
}
