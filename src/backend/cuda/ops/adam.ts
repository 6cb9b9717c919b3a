// Launcher of kernels/adam.cu: one Adam/AdamW step over f32 masters and moments, writing the
// rounded compute copy in the same pass; grid-stride.
import type { Tensor } from '../../../tensor/tensor.js';
import type { AdamHyper } from '../../backend.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertFloat, gridFor, THREADS } from './common.js';

export class AdamLauncher {
  private readonly file: KernelFile;
  private readonly args = new KernelArgs(15);

  constructor(private readonly ctx: CudaContext) {
    this.file = new KernelFile(ctx, 'adam.cu');
  }

  adam(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, lowp: Tensor | null, h: AdamHyper): void {
    for (const [t, what] of [[param, 'param'], [grad, 'grad'], [m, 'm'], [v, 'v']] as const) assertContiguous(t, `adam ${what}`);
    if (param.dtype !== 'f32' || m.dtype !== 'f32' || v.dtype !== 'f32') throw new Error('internal: adam param, m and v must be f32');
    assertFloat(grad, 'adam grad');
    if (lowp) { assertContiguous(lowp, 'adam lowp'); assertFloat(lowp, 'adam lowp'); }
    const n = param.size;
    if (n === 0) return;
    const bc1 = 1 - h.beta1 ** h.step, bc2 = 1 - h.beta2 ** h.step;
    const args = this.args.ptr(0, devicePtr(param)).ptr(1, devicePtr(grad)).ptr(2, devicePtr(m)).ptr(3, devicePtr(v))
      .ptr(4, lowp ? devicePtr(lowp) : 0n).i64(5, BigInt(n)).f32(6, h.lr).f32(7, h.beta1).f32(8, h.beta2).f32(9, h.eps)
      .f32(10, h.weightDecay).i32(11, h.decoupled ? 1 : 0).f32(12, bc1).f32(13, bc2).f32(14, h.gradScale);
    this.file.kernel(`adam_${grad.dtype}_${lowp?.dtype ?? 'bf16'}`).launch([gridFor(this.ctx, n), 1, 1], [THREADS, 1, 1], 0, args);
  }
}
