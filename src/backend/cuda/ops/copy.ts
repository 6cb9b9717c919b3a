// Launcher of kernels/copy.cu: dst[i] = src[i] between any two views of equal element count,
// converting between f32, bf16 and i32.
import type { DType } from '../../../tensor/dtype.js';
import { contiguousStrides, type Shape, type Tensor } from '../../../tensor/tensor.js';
import type { CachingAllocator } from '../runtime/allocator.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertCount, gridFor, THREADS } from './common.js';
import { collapseViews, setViewArgs, STRIDED_VIEWS_DEFINES, vectorViews, VEC, viewArgCount } from './strided_views.js';

export const COPY_DEFINES = STRIDED_VIEWS_DEFINES;

export class CopyLauncher {
  private readonly file: KernelFile;
  private readonly args = new KernelArgs(3 + viewArgCount(2));

  constructor(private readonly ctx: CudaContext, private readonly allocator: CachingAllocator) {
    this.file = new KernelFile(ctx, 'copy.cu', COPY_DEFINES);
  }

  copy(dst: Tensor, src: Tensor): void {
    if (dst.size !== src.size) throw new Error(`internal: copy ${src} into ${dst}`);
    if (dst.size === 0) return;
    // Equal sizes with different shapes (a reshape): both views are walked in row-major order,
    // through a contiguous staging copy of src when src is not contiguous itself.
    if (dst.shape.length !== src.shape.length || dst.shape.some((d, i) => d !== src.shape[i])) {
      if (src.isContiguous()) {
        this.strided(devicePtr(dst), dst.dtype, dst.strides, devicePtr(src), src.dtype, contiguousStrides(dst.shape), dst.shape);
        return;
      }
      const staged = this.allocator.alloc(src.bytes);
      try {
        this.strided(staged.ptr, src.dtype, contiguousStrides(src.shape), devicePtr(src), src.dtype, src.strides, src.shape);
        this.strided(devicePtr(dst), dst.dtype, dst.strides, staged.ptr, src.dtype, contiguousStrides(dst.shape), dst.shape);
      } finally {
        this.allocator.free(staged);
      }
      return;
    }
    this.strided(devicePtr(dst), dst.dtype, dst.strides, devicePtr(src), src.dtype, src.strides, dst.shape);
  }

  /** The copy between raw device addresses: a view of `shape` with each side's element strides. */
  strided(dst: bigint, dstType: DType, dstStrides: readonly number[], src: bigint, srcType: DType,
          srcStrides: readonly number[], shape: Shape): void {
    let n = 1;
    for (const d of shape) n *= d;
    if (n === 0) return;
    assertCount(n, 'copy');
    const v = collapseViews(shape, [dstStrides, srcStrides], 'copy');
    const vec = dstType !== 'i32' && srcType !== 'i32' ? vectorViews(v, [dst, src]) : null;
    const count = vec ? n / VEC : n;
    const args = this.args.ptr(0, dst).ptr(1, src).i64(2, BigInt(count));
    setViewArgs(args, 3, vec ?? v);
    this.file.kernel(`copy_${vec ? 'vec8_' : ''}${dstType}_${srcType}`).launch([gridFor(this.ctx, count), 1, 1], [THREADS, 1, 1], 0, args);
  }
}
