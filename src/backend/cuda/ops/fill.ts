// Launcher of kernels/fill.cu: every element of a view set to one value (its bit pattern).
import { f32ToBf16 } from '../../../tensor/dtype.js';
import type { Tensor } from '../../../tensor/tensor.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertCount, gridFor, THREADS } from './common.js';
import { collapseViews, setViewArgs, STRIDED_VIEWS_DEFINES, viewArgCount } from './strided_views.js';

export const FILL_DEFINES = STRIDED_VIEWS_DEFINES;

export class FillLauncher {
  private readonly file: KernelFile;
  private readonly args = new KernelArgs(3 + viewArgCount(1));

  constructor(private readonly ctx: CudaContext) {
    this.file = new KernelFile(ctx, 'fill.cu', FILL_DEFINES);
  }

  fill(dst: Tensor, value: number): void {
    const n = dst.size;
    if (n === 0) return;
    assertCount(n, 'fill');
    let bits: number;
    switch (dst.dtype) {
      case 'f32': bits = new Uint32Array(new Float32Array([value]).buffer)[0]!; break;
      case 'bf16': bits = f32ToBf16(Math.fround(value)); break;
      case 'i32': bits = value | 0; break;
      default: return dst.dtype satisfies never;
    }
    const v = collapseViews(dst.shape, [dst.strides], 'fill');
    const args = this.args.ptr(0, devicePtr(dst)).i64(1, BigInt(n)).u32(2, bits >>> 0);
    setViewArgs(args, 3, v);
    const name = dst.dtype === 'bf16' ? 'fill_b16' : 'fill_b32';
    this.file.kernel(name).launch([gridFor(this.ctx, n), 1, 1], [THREADS, 1, 1], 0, args);
  }
}
