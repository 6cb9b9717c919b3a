// Launcher of kernels/scatter_add_rows.cu: out[idx[m]] += (weights ? weights[m] : 1)·src[m],
// one block per source row with f32 atomics (MoE combine), or one thread per element for rows
// narrower than a warp. A bf16 destination accumulates in an
// f32 copy that is rounded once at the end.
import type { Tensor } from '../../../tensor/tensor.js';
import type { CachingAllocator } from '../runtime/allocator.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertCount, assertFloat, lastDim, NARROW_ROW, roundUp, THREADS } from './common.js';
import type { CopyLauncher } from './copy.js';

export class ScatterAddRowsLauncher {
  private readonly file: KernelFile;
  private readonly args = new KernelArgs(6);
  private readonly narrowArgs = new KernelArgs(7);

  constructor(ctx: CudaContext, private readonly allocator: CachingAllocator, private readonly copy: CopyLauncher) {
    this.file = new KernelFile(ctx, 'scatter_add_rows.cu');
  }

  scatterAddRows(out: Tensor, src: Tensor, idx: Tensor, weights: Tensor | null): void {
    for (const [t, what] of [[out, 'out'], [src, 'src'], [idx, 'idx']] as const) assertContiguous(t, `scatterAddRows ${what}`);
    if (weights) { assertContiguous(weights, 'scatterAddRows weights'); assertFloat(weights, 'scatterAddRows weights'); }
    if (idx.dtype !== 'i32') throw new Error(`internal: scatterAddRows idx is ${idx.dtype}, expected i32`);
    assertFloat(src, 'scatterAddRows src');
    assertFloat(out, 'scatterAddRows output');
    const D = lastDim(src), N = D === 0 ? 0 : out.size / D, M = idx.size;
    if (M === 0 || D === 0) return;
    assertCount(Math.max(M, N) * D, 'scatterAddRows');
    const wide = out.dtype === 'bf16' ? this.allocator.alloc(out.size * 4) : null;
    try {
      const outPtr = wide ? wide.ptr : devicePtr(out);
      if (wide) this.copy.strided(wide.ptr, 'f32', [1], devicePtr(out), 'bf16', [1], [out.size]);
      const types = `${src.dtype}_${weights?.dtype ?? 'f32'}`;
      if (D < NARROW_ROW) {
        // One thread per element (gather_rows.cu's header says why).
        const total = M * D;
        const args = this.narrowArgs.ptr(0, outPtr).ptr(1, devicePtr(src)).ptr(2, devicePtr(idx)).ptr(3, weights ? devicePtr(weights) : 0n)
          .i32(4, N).i32(5, D).i64(6, BigInt(total));
        this.file.kernel(`scatter_add_rows_narrow_${types}`).launch([Math.ceil(total / THREADS), 1, 1], [THREADS, 1, 1], 0, args);
      } else {
        const args = this.args.ptr(0, outPtr).ptr(1, devicePtr(src)).ptr(2, devicePtr(idx)).ptr(3, weights ? devicePtr(weights) : 0n)
          .i32(4, N).i32(5, D);
        this.file.kernel(`scatter_add_rows_${types}`).launch([M, 1, 1], [Math.min(THREADS, roundUp(D, 32)), 1, 1], 0, args);
      }
      if (wide) this.copy.strided(devicePtr(out), 'bf16', [1], wide.ptr, 'f32', [1], [out.size]);
    } finally {
      if (wide) this.allocator.free(wide);
    }
  }
}
