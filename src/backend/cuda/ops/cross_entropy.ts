// Launcher of kernels/cross_entropy.cu: softmax cross-entropy over a large vocabulary, one block
// of CE_THREADS per row, forward (loss, lse) and backward (dlogits).
import type { Tensor } from '../../../tensor/tensor.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertFloat, lastDim } from './common.js';

/** CE_THREADS: threads per block, also the kernels' launch bound. */
export const CROSS_ENTROPY_DEFINES = { CE_THREADS: 512 } as const;
const { CE_THREADS } = CROSS_ENTROPY_DEFINES;

export class CrossEntropyLauncher {
  private readonly file: KernelFile;
  private readonly fwdArgs = new KernelArgs(5);
  private readonly bwdArgs = new KernelArgs(7);

  constructor(ctx: CudaContext) {
    this.file = new KernelFile(ctx, 'cross_entropy.cu', CROSS_ENTROPY_DEFINES);
  }

  crossEntropy(loss: Tensor, lse: Tensor, logits: Tensor, labels: Tensor): void {
    for (const [t, what] of [[loss, 'loss'], [lse, 'lse'], [logits, 'logits'], [labels, 'labels']] as const) assertContiguous(t, `crossEntropy ${what}`);
    if (loss.dtype !== 'f32' || lse.dtype !== 'f32' || labels.dtype !== 'i32') throw new Error('internal: crossEntropy loss/lse must be f32 and labels i32');
    assertFloat(logits, 'crossEntropy logits');
    const V = lastDim(logits), N = V === 0 ? 0 : logits.size / V;
    if (N === 0) return;
    const args = this.fwdArgs.ptr(0, devicePtr(loss)).ptr(1, devicePtr(lse)).ptr(2, devicePtr(logits)).ptr(3, devicePtr(labels)).i32(4, V);
    this.file.kernel(`cross_entropy_fwd_${logits.dtype}`).launch([N, 1, 1], [CE_THREADS, 1, 1], 0, args);
  }

  crossEntropyBackward(dlogits: Tensor, logits: Tensor, labels: Tensor, lse: Tensor, dloss: Tensor, scale: number): void {
    for (const [t, what] of [[dlogits, 'dlogits'], [logits, 'logits'], [labels, 'labels'], [lse, 'lse'], [dloss, 'dloss']] as const) {
      assertContiguous(t, `crossEntropyBackward ${what}`);
    }
    if (lse.dtype !== 'f32' || dloss.dtype !== 'f32' || labels.dtype !== 'i32') throw new Error('internal: crossEntropyBackward lse/dloss must be f32 and labels i32');
    assertFloat(logits, 'crossEntropyBackward logits');
    assertFloat(dlogits, 'crossEntropyBackward dlogits');
    const V = lastDim(logits), N = V === 0 ? 0 : logits.size / V;
    if (N === 0) return;
    const args = this.bwdArgs.ptr(0, devicePtr(dlogits)).ptr(1, devicePtr(logits)).ptr(2, devicePtr(labels)).ptr(3, devicePtr(lse))
      .ptr(4, devicePtr(dloss)).f32(5, scale).i32(6, V);
    this.file.kernel(`cross_entropy_bwd_${dlogits.dtype}_${logits.dtype}`).launch([N, 1, 1], [CE_THREADS, 1, 1], 0, args);
  }
}
