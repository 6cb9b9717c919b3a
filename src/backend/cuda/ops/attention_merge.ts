// Launcher of kernels/attention_merge.cu (Backend.attentionMerge): one warp per (b, t, h) row of
// the running attention, which ring attention merges each step's partial result into.
import type { Tensor } from '../../../tensor/tensor.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, THREADS } from './common.js';

export class AttentionMergeLauncher {
  private readonly file: KernelFile;
  private readonly args = new KernelArgs(10);

  constructor(ctx: CudaContext) {
    this.file = new KernelFile(ctx, 'attention_merge.cu');
  }

  merge(accO: Tensor, accLse: Tensor, o: Tensor, lse: Tensor): void {
    const op = 'attentionMerge';
    assertContiguous(accO, `${op} accO`);
    assertContiguous(accLse, `${op} accLse`);
    if (accO.rank !== 4 || accO.dtype !== 'f32' || accLse.dtype !== 'f32') throw new Error(`internal: ${op} of ${accO.dtype} [${accO.shape}] with lse ${accLse.dtype}`);
    const [B, c, H, Dv] = accO.shape as [number, number, number, number];
    if (accLse.shape.join() !== [B, H, c].join() || o.shape.join() !== accO.shape.join() || lse.shape.join() !== accLse.shape.join()) {
      throw new Error(`internal: ${op} of [${accO.shape}] and [${accLse.shape}] with [${o.shape}] and [${lse.shape}]`);
    }
    if (o.dtype !== 'bf16' && o.dtype !== 'f32') throw new Error(`internal: ${op} takes a bf16 or f32 block output, got ${o.dtype}`);
    if (lse.dtype !== 'f32') throw new Error(`internal: ${op} takes an f32 block lse, got ${lse.dtype}`);
    // The kernel walks o's [c, H, Dv] and lse's [B, H] rows densely and takes one stride for the rest.
    const [ob, ot, oh, od] = o.strides as [number, number, number, number];
    const [lb, lh, lt] = lse.strides as [number, number, number];
    if (od !== 1 || oh !== Dv || ot !== H * Dv || lt !== 1 || lb !== H * lh) {
      throw new Error(`internal: ${op} takes o with contiguous [c,H,Dv] rows and lse with contiguous positions (strides [${o.strides}], [${lse.strides}])`);
    }
    const rows = B * c * H;
    if (rows === 0) return;
    const args = this.args.ptr(0, devicePtr(accO)).ptr(1, devicePtr(accLse)).ptr(2, devicePtr(o)).ptr(3, devicePtr(lse))
      .i32(4, B).i32(5, c).i32(6, H).i32(7, Dv).i64(8, BigInt(ob)).i64(9, BigInt(lh));
    this.file.kernel(`attention_merge_${o.dtype}`).launch([Math.ceil(rows / (THREADS / 32)), 1, 1], [THREADS, 1, 1], 0, args);
  }
}
