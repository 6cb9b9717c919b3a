// Launcher of kernels/cross_entropy.cu: softmax cross-entropy over a large vocabulary, one block
// of CE_THREADS per row, forward (loss, lse), backward (dlogits), and both in one pass
// (crossEntropyWithGrad: the row cached in shared memory when it fits).
import { bytesPerElement } from '../../../tensor/dtype.js';
import type { Tensor } from '../../../tensor/tensor.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertFloat, lastDim } from './common.js';

/** CE_THREADS: threads per block, also the kernels' launch bound. */
export const CROSS_ENTROPY_DEFINES = { CE_THREADS: 512 } as const;
const { CE_THREADS } = CROSS_ENTROPY_DEFINES;
/** Room left for the kernels' static shared memory (32 MaxSum pairs and the row's lse, 260 bytes) within the block's opt-in limit. */
const CE_STATIC_SHARED = 1024;

export class CrossEntropyLauncher {
  private readonly file: KernelFile;
  private readonly fwdArgs = new KernelArgs(5);
  private readonly bwdArgs = new KernelArgs(7);
  private readonly withGradArgs = new KernelArgs(8);

  constructor(private readonly ctx: CudaContext) {
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

  crossEntropyWithGrad(loss: Tensor, lse: Tensor, dlogits: Tensor, logits: Tensor, labels: Tensor, scale: number): void {
    for (const [t, what] of [[loss, 'loss'], [lse, 'lse'], [dlogits, 'dlogits'], [logits, 'logits'], [labels, 'labels']] as const) {
      assertContiguous(t, `crossEntropyWithGrad ${what}`);
    }
    if (loss.dtype !== 'f32' || lse.dtype !== 'f32' || labels.dtype !== 'i32') throw new Error('internal: crossEntropyWithGrad loss/lse must be f32 and labels i32');
    assertFloat(logits, 'crossEntropyWithGrad logits');
    if (dlogits.dtype !== logits.dtype || dlogits.size !== logits.size) {
      throw new Error(`internal: crossEntropyWithGrad writes dlogits in the logits' dtype and shape, got ${dlogits} for ${logits}`);
    }
    const V = lastDim(logits), N = V === 0 ? 0 : logits.size / V;
    if (N === 0) return;
    // The row's cache: V elements cover its aligned body wherever the row starts. Rows that do not
    // fit in a block's shared memory are read twice instead (0 bytes: no cache).
    const rowBytes = V * bytesPerElement(logits.dtype);
    const cacheBytes = rowBytes <= this.ctx.maxSharedBytesOptin - CE_STATIC_SHARED ? rowBytes : 0;
    const kernel = this.file.kernel(`cross_entropy_with_grad_${logits.dtype}`);
    kernel.allowDynamicShared(cacheBytes, `crossEntropyWithGrad over ${V} classes`);
    const args = this.withGradArgs.ptr(0, devicePtr(loss)).ptr(1, devicePtr(lse)).ptr(2, devicePtr(dlogits)).ptr(3, devicePtr(logits))
      .ptr(4, devicePtr(labels)).f32(5, scale).i32(6, V).i32(7, cacheBytes);
    kernel.launch([N, 1, 1], [CE_THREADS, 1, 1], cacheBytes, args);
  }
}
