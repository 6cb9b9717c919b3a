// Launcher of kernels/softmax.cu: row softmax in f32 (the router) and its backward, one warp
// per row.
import type { Tensor } from '../../../tensor/tensor.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, lastDim, THREADS } from './common.js';

export class SoftmaxLauncher {
  private readonly file: KernelFile;
  private readonly fwdArgs = new KernelArgs(4);
  private readonly bwdArgs = new KernelArgs(5);

  constructor(ctx: CudaContext) {
    this.file = new KernelFile(ctx, 'softmax.cu');
  }

  softmax(out: Tensor, x: Tensor): void {
    assertContiguous(out, 'softmax output');
    assertContiguous(x, 'softmax input');
    if (out.dtype !== 'f32' || x.dtype !== 'f32') throw new Error(`internal: softmax takes f32 (got ${x.dtype} → ${out.dtype})`);
    const C = lastDim(x), R = C === 0 ? 0 : x.size / C;
    if (R === 0) return;
    const args = this.fwdArgs.ptr(0, devicePtr(out)).ptr(1, devicePtr(x)).i32(2, R).i32(3, C);
    this.file.kernel('softmax_fwd').launch([Math.ceil(R / (THREADS / 32)), 1, 1], [THREADS, 1, 1], 0, args);
  }

  softmaxBackward(dx: Tensor, dy: Tensor, y: Tensor): void {
    for (const [t, what] of [[dx, 'dx'], [dy, 'dy'], [y, 'y']] as const) {
      assertContiguous(t, `softmaxBackward ${what}`);
      if (t.dtype !== 'f32') throw new Error(`internal: softmaxBackward ${what} is ${t.dtype}, expected f32`);
    }
    const C = lastDim(y), R = C === 0 ? 0 : y.size / C;
    if (R === 0) return;
    const args = this.bwdArgs.ptr(0, devicePtr(dx)).ptr(1, devicePtr(dy)).ptr(2, devicePtr(y)).i32(3, R).i32(4, C);
    this.file.kernel('softmax_bwd').launch([Math.ceil(R / (THREADS / 32)), 1, 1], [THREADS, 1, 1], 0, args);
  }
}
