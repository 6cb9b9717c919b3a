// Launcher of kernels/embedding.cu: row lookup (out[n] = weight[ids[n]]) and its backward
// (dout rows added into the dweight rows that ids name: f32 by atomics, grid-stride over dout's
// elements; bf16 through an f32 workspace of one row per first use of an id, rounded once); the
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
  private readonly compactArgs = new KernelArgs(7);
  private readonly storeArgs = new KernelArgs(7);

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
    if (dweight.dtype !== 'f32' && dweight.dtype !== 'bf16') throw new Error(`internal: embeddingBackward dweight is ${dweight.dtype}, expected f32 or bf16`);
    if (ids.dtype !== 'i32') throw new Error(`internal: embeddingBackward ids are ${ids.dtype}, expected i32`);
    assertFloat(dout, 'embeddingBackward dout');
    if (squares && (squares.dtype !== 'f32' || squares.size !== 1)) throw new Error(`internal: embeddingBackward squares is ${squares}, expected f32 [1]`);
    const [V, D] = dweight.shape as [number, number];
    const N = ids.size, total = N * D;
    if (total === 0) {
      if (squares) this.ctx.fillWords(devicePtr(squares), 0, 1);
      return squares !== undefined;
    }
    assertCount(total, 'embeddingBackward');
    const wide = dweight.dtype === 'f32';
    if (wide) {
      const args = this.bwdArgs.ptr(0, devicePtr(dweight)).ptr(1, devicePtr(ids)).ptr(2, devicePtr(dout)).i64(3, BigInt(total)).i32(4, D).i32(5, V);
      this.file.kernel(`embedding_bwd_${dout.dtype}`).launch([gridFor(this.ctx, total), 1, 1], [THREADS, 1, 1], 0, args);
      if (!squares) return false;
    }
    // Scratch in stream order: each id's first position; one partial per position; bf16: the f32 sums.
    const first = this.allocator.alloc(V * 4);
    const partials = squares ? this.allocator.alloc(N * 4) : null;
    const ws = wide ? null : this.allocator.alloc(total * 4);
    try {
      this.ctx.fillWords(first.ptr, 0x7fffffff, V);
      this.file.kernel('embedding_first_use').launch([Math.ceil(N / THREADS), 1, 1], [THREADS, 1, 1], 0,
        this.firstArgs.ptr(0, first.ptr).ptr(1, devicePtr(ids)).i32(2, N).i32(3, V));
      if (ws) {
        this.ctx.fillWords(ws.ptr, 0, total);
        this.file.kernel(`embedding_bwd_compact_${dout.dtype}`).launch([gridFor(this.ctx, total), 1, 1], [THREADS, 1, 1], 0,
          this.compactArgs.ptr(0, ws.ptr).ptr(1, devicePtr(ids)).ptr(2, first.ptr).ptr(3, devicePtr(dout)).i64(4, BigInt(total)).i32(5, D).i32(6, V));
        this.file.kernel('embedding_bwd_store_bf16').launch([N, 1, 1], [THREADS, 1, 1], 0,
          this.storeArgs.ptr(0, devicePtr(dweight)).ptr(1, ws.ptr).ptr(2, devicePtr(ids)).ptr(3, first.ptr).ptr(4, partials?.ptr ?? 0n)
            .i32(5, D).i32(6, V));
      } else {
        this.file.kernel('embedding_row_squares').launch([N, 1, 1], [THREADS, 1, 1], 0,
          this.squaresArgs.ptr(0, partials!.ptr).ptr(1, devicePtr(dweight)).ptr(2, devicePtr(ids)).ptr(3, first.ptr).i32(4, D).i32(5, V));
      }
      if (squares) this.sumSquares.sumPartials(squares, partials!.ptr, N);
    } finally {
      this.allocator.free(first);
      if (partials) this.allocator.free(partials);
      if (ws) this.allocator.free(ws);
    }
    return squares !== undefined;
  }

}
