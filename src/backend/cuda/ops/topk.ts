// Launcher of kernels/topk.cu: the k largest entries of each router row, one warp per row with
// TOPK_PER_LANE values in each lane's registers.
import type { Tensor } from '../../../tensor/tensor.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, lastDim, THREADS } from './common.js';

/** TOPK_PER_LANE: values each of a warp's 32 lanes keeps, so rows of at most 32·8 = 256. */
export const TOPK_DEFINES = { TOPK_PER_LANE: 8 } as const;
const TOPK_MAX_E = 32 * TOPK_DEFINES.TOPK_PER_LANE;

export class TopkLauncher {
  private readonly file: KernelFile;
  private readonly args = new KernelArgs(6);

  constructor(ctx: CudaContext) {
    this.file = new KernelFile(ctx, 'topk.cu', TOPK_DEFINES);
  }

  topk(values: Tensor, indices: Tensor, x: Tensor, k: number): void {
    for (const [t, what] of [[values, 'values'], [indices, 'indices'], [x, 'x']] as const) assertContiguous(t, `topk ${what}`);
    if (x.dtype !== 'f32' || values.dtype !== 'f32' || indices.dtype !== 'i32') throw new Error('internal: topk takes f32 x and values, i32 indices');
    const E = lastDim(x), N = E === 0 ? 0 : x.size / E;
    if (E > TOPK_MAX_E) throw new Error(`topk over ${E} experts: the CUDA router kernel handles at most ${TOPK_MAX_E}; use fewer routed experts`);
    if (!Number.isInteger(k) || k < 1 || k > E) throw new Error(`internal: topk k=${k} for ${E} entries`);
    if (N === 0) return;
    const args = this.args.ptr(0, devicePtr(values)).ptr(1, devicePtr(indices)).ptr(2, devicePtr(x)).i32(3, N).i32(4, E).i32(5, k);
    this.file.kernel('topk_rows').launch([Math.ceil(N / (THREADS / 32)), 1, 1], [THREADS, 1, 1], 0, args);
  }
}
