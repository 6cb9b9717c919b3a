// Launcher of kernels/bincount.cu: per-group histograms of i32 indices (expert loads), shared
// memory counters per block, a few blocks per group.
import type { Tensor } from '../../../tensor/tensor.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, THREADS } from './common.js';

export class BincountLauncher {
  private readonly file: KernelFile;
  private readonly args = new KernelArgs(4);

  constructor(private readonly ctx: CudaContext) {
    this.file = new KernelFile(ctx, 'bincount.cu');
  }

  bincount(counts: Tensor, idx: Tensor): void {
    assertContiguous(counts, 'bincount counts');
    assertContiguous(idx, 'bincount idx');
    if (counts.dtype !== 'i32' || idx.dtype !== 'i32') throw new Error('internal: bincount takes i32 idx and counts');
    const G = idx.rank === 1 ? 1 : idx.shape[0]!, M = G === 0 ? 0 : idx.size / G, E = G === 0 ? 0 : counts.size / G;
    if (counts.size === 0) return;
    this.ctx.fillWords(devicePtr(counts), 0, counts.size);
    if (M === 0) return;
    if (G > 65535) throw new Error(`internal: bincount over ${G} groups (grid y ≤ 65535)`);
    const k = this.file.kernel('bincount_rows');
    k.allowDynamicShared(E * 4, `bincount over ${E} bins`);
    const blocksPerGroup = Math.max(1, Math.min(Math.ceil(M / (THREADS * 4)), Math.ceil(this.ctx.smCount * 2 / G)));
    const args = this.args.ptr(0, devicePtr(counts)).ptr(1, devicePtr(idx)).i32(2, M).i32(3, E);
    k.launch([blocksPerGroup, G, 1], [THREADS, 1, 1], E * 4, args);
  }
}
