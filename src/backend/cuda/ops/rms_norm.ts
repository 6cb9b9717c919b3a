// Launcher of kernels/rms_norm.cu: RMSNorm forward (one block per row) and backward (a
// persistent grid writing per-block dw partials, then rms_norm_dw_reduce adds them to dw in a
// fixed order). Either takes the kernel's register path when the rows allow it.
import type { Tensor } from '../../../tensor/tensor.js';
import type { CachingAllocator } from '../runtime/allocator.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertCount, assertFloat, assertSameDType, lastDim, roundUp } from './common.js';

/**
 * RMS_VPT: vectors of 8 a thread keeps in registers on the register path. RMS_BWD_THREADS: the
 * backward's block size limit (its register budget).
 */
export const RMS_NORM_DEFINES = { RMS_VPT: 4, RMS_BWD_THREADS: 256 } as const;
const { RMS_VPT, RMS_BWD_THREADS } = RMS_NORM_DEFINES;

/** Threads for a block that walks one row of D elements: ~8 elements each, 64..1024. */
function rowThreads(D: number): number {
  return Math.min(1024, Math.max(64, roundUp(Math.ceil(D / 8), 32)));
}

/** Whether rms_norm.cu takes its register path: rows of whole 16-byte vectors, aligned, that fit. */
function registerPath(D: number, tensors: readonly Tensor[], maxThreads: number): boolean {
  return D % 8 === 0 && Math.ceil(D / 8 / RMS_VPT) <= maxThreads && tensors.every((t) => (devicePtr(t) & 15n) === 0n);
}

function registerThreads(D: number): number {
  return roundUp(Math.ceil(D / 8 / RMS_VPT), 32);
}

export class RmsNormLauncher {
  private readonly file: KernelFile;
  private readonly fwdArgs = new KernelArgs(6);
  private readonly bwdArgs = new KernelArgs(8);
  private readonly reduceArgs = new KernelArgs(4);

  constructor(private readonly ctx: CudaContext, private readonly allocator: CachingAllocator) {
    this.file = new KernelFile(ctx, 'rms_norm.cu', RMS_NORM_DEFINES);
  }

  rmsNorm(y: Tensor, rstd: Tensor, x: Tensor, w: Tensor, eps: number): void {
    for (const [t, what] of [[y, 'y'], [rstd, 'rstd'], [x, 'x'], [w, 'w']] as const) assertContiguous(t, `rmsNorm ${what}`);
    assertSameDType(x, y, 'rmsNorm x and y');
    assertFloat(x, 'rmsNorm x');
    assertFloat(w, 'rmsNorm w');
    if (rstd.dtype !== 'f32') throw new Error(`internal: rmsNorm rstd is ${rstd.dtype}, expected f32`);
    const D = lastDim(x), R = D === 0 ? 0 : x.size / D;
    if (R === 0) return;
    assertCount(x.size, 'rmsNorm');
    const threads = registerPath(D, [x, y, w], 1024) ? registerThreads(D) : rowThreads(D);
    const args = this.fwdArgs.ptr(0, devicePtr(y)).ptr(1, devicePtr(rstd)).ptr(2, devicePtr(x)).ptr(3, devicePtr(w)).i32(4, D).f32(5, eps);
    this.file.kernel(`rms_norm_fwd_${x.dtype}_${w.dtype}`).launch([R, 1, 1], [threads, 1, 1], 0, args);
  }

  rmsNormBackward(dx: Tensor, dw: Tensor, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor): void {
    for (const [t, what] of [[dx, 'dx'], [dw, 'dw'], [dy, 'dy'], [x, 'x'], [w, 'w'], [rstd, 'rstd']] as const) assertContiguous(t, `rmsNormBackward ${what}`);
    assertSameDType(dx, x, 'rmsNormBackward dx and x');
    assertSameDType(dy, x, 'rmsNormBackward dy and x');
    assertFloat(x, 'rmsNormBackward x');
    assertFloat(w, 'rmsNormBackward w');
    if (dw.dtype !== 'f32' || rstd.dtype !== 'f32') throw new Error(`internal: rmsNormBackward dw and rstd must be f32 (got ${dw.dtype}, ${rstd.dtype})`);
    const D = lastDim(x), R = D === 0 ? 0 : x.size / D;
    if (R === 0) return;
    assertCount(x.size, 'rmsNormBackward');
    const k = this.file.kernel(`rms_norm_bwd_${x.dtype}_${w.dtype}`);
    const registers = registerPath(D, [dx, dy, x, w], RMS_BWD_THREADS);
    const threads = registers ? registerThreads(D) : Math.min(RMS_BWD_THREADS, rowThreads(D));
    // Register path: ~160 registers a thread, so as many blocks as fit an SM's 64K registers.
    const blocksPerSm = registers ? Math.max(1, Math.min(16, Math.floor(65536 / (160 * threads)))) : 2;
    const G = Math.min(R, this.ctx.smCount * blocksPerSm);
    const shared = registers ? 0 : D * 4;
    k.allowDynamicShared(shared, `rmsNormBackward over width ${D}`);
    const partial = this.allocator.alloc(G * D * 4);
    try {
      const args = this.bwdArgs.ptr(0, devicePtr(dx)).ptr(1, partial.ptr).ptr(2, devicePtr(dy)).ptr(3, devicePtr(x))
        .ptr(4, devicePtr(w)).ptr(5, devicePtr(rstd)).i32(6, R).i32(7, D);
      k.launch([G, 1, 1], [threads, 1, 1], shared, args);
      const red = this.reduceArgs.ptr(0, devicePtr(dw)).ptr(1, partial.ptr).i32(2, G).i32(3, D);
      this.file.kernel('rms_norm_dw_reduce').launch([Math.ceil(D / 32), 1, 1], [32, 32, 1], 0, red);
    } finally {
      this.allocator.free(partial); // stream order: the next user of the block runs after the reduce
    }
  }
}
