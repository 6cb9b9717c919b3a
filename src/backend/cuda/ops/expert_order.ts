// Launcher of kernels/expert_order.cu: routed slots grouped by expert, stably, in three
// launches (per-chunk histograms, one scan block, one placing warp per chunk); and the inverse
// of a block of that order (each slot's row), one grid-stride launch.
import type { Tensor } from '../../../tensor/tensor.js';
import type { CachingAllocator } from '../runtime/allocator.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, gridFor, roundUp, THREADS } from './common.js';

export class ExpertOrderLauncher {
  private readonly file: KernelFile;
  private readonly histArgs = new KernelArgs(5);
  private readonly scanArgs = new KernelArgs(4);
  private readonly placeArgs = new KernelArgs(6);
  private readonly inverseArgs = new KernelArgs(5);

  constructor(private readonly ctx: CudaContext, private readonly allocator: CachingAllocator) {
    this.file = new KernelFile(ctx, 'expert_order.cu');
  }

  expertOrder(order: Tensor, offsets: Tensor, expertOfSlot: Tensor, numExperts: number): void {
    for (const [t, what] of [[order, 'order'], [offsets, 'offsets'], [expertOfSlot, 'expertOfSlot']] as const) {
      assertContiguous(t, `expertOrder ${what}`);
      if (t.dtype !== 'i32') throw new Error(`internal: expertOrder ${what} is ${t.dtype}, expected i32`);
    }
    const M = expertOfSlot.size, E = numExperts;
    if (offsets.size !== E + 1) throw new Error(`internal: expertOrder offsets has ${offsets.size} entries for ${E} experts`);
    if (M === 0) { this.ctx.fillWords(devicePtr(offsets), 0, E + 1); return; }
    // At most ~128 chunks so the per-expert scan over chunks stays short; 32-slot steps inside one.
    const chunk = roundUp(Math.max(1024, Math.ceil(M / 128)), 32);
    const B = Math.ceil(M / chunk);
    const shared = E * 4;
    const hist = this.file.kernel('expert_order_hist');
    const scan = this.file.kernel('expert_order_scan');
    const place = this.file.kernel('expert_order_place');
    for (const k of [hist, scan, place]) k.allowDynamicShared(shared, `expertOrder over ${E} experts`);
    const work = this.allocator.alloc(B * E * 4);
    try {
      const slots = devicePtr(expertOfSlot);
      hist.launch([B, 1, 1], [THREADS, 1, 1], shared, this.histArgs.ptr(0, work.ptr).ptr(1, slots).i32(2, M).i32(3, E).i32(4, chunk));
      scan.launch([1, 1, 1], [Math.min(1024, roundUp(Math.max(E, 32), 32)), 1, 1], shared,
        this.scanArgs.ptr(0, work.ptr).ptr(1, devicePtr(offsets)).i32(2, B).i32(3, E));
      place.launch([B, 1, 1], [32, 1, 1], shared,
        this.placeArgs.ptr(0, devicePtr(order)).ptr(1, slots).ptr(2, work.ptr).i32(3, M).i32(4, E).i32(5, chunk));
    } finally {
      this.allocator.free(work);
    }
  }

  expertOrderInverse(rowOfSlot: Tensor, order: Tensor, first: number, count: number): void {
    for (const [t, what] of [[rowOfSlot, 'rowOfSlot'], [order, 'order']] as const) {
      assertContiguous(t, `expertOrderInverse ${what}`);
      if (t.dtype !== 'i32') throw new Error(`internal: expertOrderInverse ${what} is ${t.dtype}, expected i32`);
    }
    const S = order.size;
    if (rowOfSlot.size !== S || first < 0 || count < 0 || first + count > S) {
      throw new Error(`internal: expertOrderInverse of rows [${first}, ${first + count}) of ${S} slots into ${rowOfSlot.size}`);
    }
    if (S === 0) return;
    const args = this.inverseArgs.ptr(0, devicePtr(rowOfSlot)).ptr(1, devicePtr(order)).i32(2, S).i32(3, first).i32(4, count);
    this.file.kernel('expert_order_inverse').launch([gridFor(this.ctx, S), 1, 1], [THREADS, 1, 1], 0, args);
  }
}
