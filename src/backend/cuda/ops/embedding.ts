// Launcher of kernels/embedding.cu: row lookup (out[n] = weight[ids[n]]) and its backward
// (dout rows added into the f32 dweight rows that ids name), grid-stride over out's elements; the
// backward also leaves the squares of the rows it wrote when asked (Backend.embeddingBackward).
import type { Tensor } from '../../../tensor/tensor.js';
import type { CachingAllocator } from '../runtime/allocator.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertCount, assertFloat, gridFor, THREADS } from './common.js';
import type { SumSquaresMultiLauncher } from './sum_squares_multi.js';

export class EmbeddingLauncher {
  private readonly file: KernelFile;
  private readonly fwdArgs = new KernelArgs(6);
  private readonly bwdArgs = new KernelArgs(6);
  private readonly firstArgs = new KernelArgs(4);
  private readonly squaresArgs = new KernelArgs(6);

  constructor(private readonly ctx: CudaContext, private readonly allocator: CachingAllocator, private readonly sumSquares: SumSquaresMultiLauncher) {
    this.file = new KernelFile(ctx, 'embedding.cu');
  }

  embedding(out: Tensor, ids: Tensor, weight: Tensor): void {
    for (const [t, what] of [[out, 'out'], [ids, 'ids'], [weight, 'weight']] as const) assertContiguous(t, `embedding ${what}`);
    if (ids.dtype !== 'i32') throw new Error(`internal: embedding ids are ${ids.dtype}, expected i32`);
    assertFloat(weight, 'embedding weight');
    assertFloat(out, 'embedding output');
    const [V, D] = weight.shape as [number, number];
    const total = ids.size * D;
    if (total === 0) return;
    assertCount(total, 'embedding');
    const args = this.fwdArgs.ptr(0, devicePtr(out)).ptr(1, devicePtr(ids)).ptr(2, devicePtr(weight)).i64(3, BigInt(total)).i32(4, D).i32(5, V);
    this.file.kernel(`embedding_fwd_${out.dtype}_${weight.dtype}`).launch([gridFor(this.ctx, total), 1, 1], [THREADS, 1, 1], 0, args);
  }

  embeddingBackward(dweight: Tensor, ids: Tensor, dout: Tensor, squares?: Tensor): boolean {
    for (const [t, what] of [[dweight, 'dweight'], [ids, 'ids'], [dout, 'dout']] as const) assertContiguous(t, `embeddingBackward ${what}`);
    if (dweight.dtype !== 'f32') throw new Error(`internal: embeddingBackward dweight is ${dweight.dtype}, expected f32`);
    if (ids.dtype !== 'i32') throw new Error(`internal: embeddingBackward ids are ${ids.dtype}, expected i32`);
    assertFloat(dout, 'embeddingBackward dout');
    const [V, D] = dweight.shape as [number, number];
    const total = ids.size * D;
    if (total > 0) {
      assertCount(total, 'embeddingBackward');
      const args = this.bwdArgs.ptr(0, devicePtr(dweight)).ptr(1, devicePtr(ids)).ptr(2, devicePtr(dout)).i64(3, BigInt(total)).i32(4, D).i32(5, V);
      this.file.kernel(`embedding_bwd_${dout.dtype}`).launch([gridFor(this.ctx, total), 1, 1], [THREADS, 1, 1], 0, args);
    }
    if (!squares) return false;
    if (squares.dtype !== 'f32' || squares.size !== 1) throw new Error(`internal: embeddingBackward squares is ${squares}, expected f32 [1]`);
    const N = ids.size;
    if (N === 0 || D === 0) { this.ctx.fillWords(devicePtr(squares), 0, 1); return true; }
    // Scratch in stream order: each id's first position, then one partial per position.
    const first = this.allocator.alloc(V * 4), partials = this.allocator.alloc(N * 4);
    try {
      this.ctx.fillWords(first.ptr, 0x7fffffff, V);
      this.file.kernel('embedding_first_use').launch([Math.ceil(N / THREADS), 1, 1], [THREADS, 1, 1], 0,
        this.firstArgs.ptr(0, first.ptr).ptr(1, devicePtr(ids)).i32(2, N).i32(3, V));
      this.file.kernel('embedding_row_squares').launch([N, 1, 1], [THREADS, 1, 1], 0,
        this.squaresArgs.ptr(0, partials.ptr).ptr(1, devicePtr(dweight)).ptr(2, devicePtr(ids)).ptr(3, first.ptr).i32(4, D).i32(5, V));
      this.sumSquares.sumPartials(squares, partials.ptr, N);
    } finally {
      this.allocator.free(first);
      this.allocator.free(partials);
    }
    return true;
  }
}
