// matmul on cuBLASLt (ffi/cublaslt.ts): out[b] = alpha·op(a[b])·op(b[b]) + beta·out[b], a batch
// with a shared rank-2 right operand folded into one taller product. No kernel file of its own.
import type { Tensor } from '../../../tensor/tensor.js';
import type { MatmulOptions } from '../../backend.js';
import { CublasLt, type GemmOptions } from '../ffi/cublaslt.js';
import type { CachingAllocator } from '../runtime/allocator.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { launchTiming } from '../runtime/launch_timer.js';
import { launchCounts } from '../runtime/module.js';
import { assertContiguous, assertFloat, assertSameDType } from './common.js';
import type { FillLauncher } from './fill.js';
import type { UnaryLauncher } from './unary.js';

export class MatmulLauncher {
  private lt: CublasLt | undefined;

  constructor(private readonly ctx: CudaContext, private readonly allocator: CachingAllocator,
              private readonly fill: FillLauncher, private readonly unary: UnaryLauncher) {}

  /** The cuBLASLt handle and its workspace, made on the first product. */
  private get cublasLt(): CublasLt {
    this.lt ??= new CublasLt(this.ctx, this.allocator);
    return this.lt;
  }

  matmul(out: Tensor, a: Tensor, b: Tensor, opts: MatmulOptions): void {
    assertContiguous(out, 'matmul output');
    assertContiguous(a, 'matmul a');
    assertContiguous(b, 'matmul b');
    assertSameDType(a, b, 'matmul operands');
    assertFloat(a, 'matmul operand');
    const transA = opts.transA ?? false, transB = opts.transB ?? false;
    const alpha = opts.alpha ?? 1, beta = opts.beta ?? 0;
    if ((a.rank !== 2 && a.rank !== 3) || (b.rank !== 2 && b.rank !== 3) || (out.rank !== 2 && out.rank !== 3)) {
      throw new Error(`internal: matmul ranks a ${a.rank}, b ${b.rank}, out ${out.rank} (2 or 3 each)`);
    }
    const aRows = a.shape[a.rank - 2]!, aCols = a.shape[a.rank - 1]!;
    const bRows = b.shape[b.rank - 2]!, bCols = b.shape[b.rank - 1]!;
    const M = transA ? aCols : aRows, K = transA ? aRows : aCols;
    const N = transB ? bRows : bCols, Kb = transB ? bCols : bRows;
    if (Kb !== K) throw new Error(`internal: matmul inner dims ${K} vs ${Kb}`);
    const aBatch = a.rank === 3 ? a.shape[0]! : 1, bBatch = b.rank === 3 ? b.shape[0]! : 1;
    const batch = Math.max(aBatch, bBatch, out.rank === 3 ? out.shape[0]! : 1);
    if ((a.rank === 3 && aBatch !== batch) || (b.rank === 3 && bBatch !== batch) || out.size !== batch * M * N) {
      throw new Error(`internal: matmul out [${out.shape}] for a [${a.shape}] b [${b.shape}] (batch ${batch}, ${M}x${N})`);
    }
    if (out.size === 0) return;
    if (K === 0) {
      // op(a)·op(b) is zero: out = beta·out.
      if (beta === 0) this.fill.fill(out, 0);
      else this.unary.unary('scale', out, out, beta);
      return;
    }
    const dtypeIn = a.dtype as 'f32' | 'bf16';
    const dtypeOut = out.dtype;
    assertFloat(out, 'matmul output');
    if (batch > 1 && a.rank === 3 && b.rank === 2 && !transA) {
      // A shared right operand: the batch is one [batch·M, K] × [K, N] product.
      this.gemm(`${batch * M}x${N}x${K}`, {
        m: batch * M, n: N, k: K, transA: false, transB, alpha, beta, dtypeIn, dtypeOut: dtypeOut as 'f32' | 'bf16',
      }, out, a, b);
      return;
    }
    this.gemm(`${batch > 1 ? `${batch}x` : ''}${M}x${N}x${K}${transA ? ' tA' : ''}${transB ? ' tB' : ''}`, {
      m: M, n: N, k: K, transA, transB, alpha, beta, batch,
      strideA: a.rank === 3 ? M * K : 0,
      strideB: b.rank === 3 ? K * N : 0,
      strideOut: M * N,
      dtypeIn, dtypeOut: dtypeOut as 'f32' | 'bf16',
    }, out, a, b);
  }

  /** One cuBLASLt product, counted, and timed under `shape` when a launch timer is installed. */
  private gemm(shape: string, opts: GemmOptions, out: Tensor, a: Tensor, b: Tensor): void {
    launchCounts.cublasLt++;
    const run = () => this.cublasLt.gemm(devicePtr(out), devicePtr(a), devicePtr(b), opts);
    const timer = launchTiming.timer;
    if (timer) timer.around(`cuBLASLt ${shape} ${opts.dtypeIn}->${opts.dtypeOut}${opts.beta ? ' +=' : ''}`, this.ctx.stream, run);
    else run();
  }
}
