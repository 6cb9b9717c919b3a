// Launcher of kernels/mla_attention_generic.cu: MLA attention for head widths or dtypes the
// tensor-core kernels do not take (mla_kernel_choice.ts decides). One warp per query row. dk,
// dv and dk_pe are accumulated in f32 scratch from the caching allocator, then rounded once
// into the gradients.
import type { Tensor } from '../../../tensor/tensor.js';
import { contiguousStrides } from '../../../tensor/tensor.js';
import type { AttentionOptions } from '../../backend.js';
import type { CachingAllocator, GpuBlock } from '../runtime/allocator.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import type { CopyLauncher } from './copy.js';
import type { MlaGrads } from './mla_attention.js';

/** MAXPL: head dimensions each of a warp's 32 lanes holds, so widths up to 32·MAXPL. */
export const MLA_GENERIC_DEFINES = { MAXPL: 8 } as const;
const MAX_WIDTH = 32 * MLA_GENERIC_DEFINES.MAXPL;

/** B, Sq (q's positions), Skv (k's and v's), H and the widths; causal needs Sq = Skv. */
function dims(qNope: Tensor, qPe: Tensor, v: Tensor, opts: AttentionOptions) {
  const [B, Sq, H, Dn] = qNope.shape as [number, number, number, number];
  const Skv = v.shape[1]!, Dr = qPe.shape[3]!, Dv = v.shape[3]!;
  if (Dn + Dr > MAX_WIDTH || Dv > MAX_WIDTH) throw new Error(`mlaAttention: head widths ${Dn}+${Dr} / ${Dv} exceed ${MAX_WIDTH}, the limit of the generic CUDA kernel`);
  if (opts.causal && Sq !== Skv) {
    throw new Error(`mlaAttention: a causal mask needs as many queries as keys, got q ${Sq} × kv ${Skv} positions; pass causal: false for a block of other positions`);
  }
  if (B * Sq * H > 0 && Skv === 0) throw new Error(`mlaAttention: kv has 0 positions (q ${Sq}); skip the call for an empty block`);
  return { B, Sq, Skv, H, Dn, Dr, Dv };
}

export class MlaAttentionGenericLauncher {
  private readonly file: KernelFile;
  private readonly fwdArgs = new KernelArgs(15);
  private readonly bwdArgs = new KernelArgs(21);

  constructor(private readonly ctx: CudaContext, private readonly allocator: CachingAllocator, private readonly copy: CopyLauncher) {
    this.file = new KernelFile(ctx, 'mla_attention_generic.cu', MLA_GENERIC_DEFINES);
  }

  forward(o: Tensor, lse: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, opts: AttentionOptions): void {
    const { B, Sq, Skv, H, Dn, Dr, Dv } = dims(qNope, qPe, v, opts);
    if (B * Sq * H === 0) return;
    const args = this.fwdArgs.ptr(0, devicePtr(qNope)).ptr(1, devicePtr(qPe)).ptr(2, devicePtr(kNope)).ptr(3, devicePtr(kPe)).ptr(4, devicePtr(v))
      .ptr(5, devicePtr(o)).ptr(6, devicePtr(lse)).i32(7, Sq).i32(8, Skv).i32(9, H).i32(10, Dn).i32(11, Dr).i32(12, Dv).f32(13, opts.scale)
      .i32(14, opts.causal ? 1 : 0);
    this.file.kernel(`mla_generic_fwd_${qNope.dtype}`).launch([Sq, H, B], [32, 1, 1], 0, args);
  }

  backward(grads: MlaGrads, dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, o: Tensor, lse: Tensor,
           opts: AttentionOptions): void {
    const { B, Sq, Skv, H, Dn, Dr, Dv } = dims(qNope, qPe, v, opts);
    if (B * Sq * H === 0) return;
    const scratch: GpuBlock[] = [];
    const zeroed = (elements: number): bigint => {
      const b = this.allocator.alloc(elements * 4);
      scratch.push(b);
      this.ctx.fillWords(b.ptr, 0, elements);
      return b.ptr;
    };
    // Rounds an f32 scratch buffer into a gradient tensor.
    const toOut = (dst: Tensor, src: bigint) =>
      this.copy.strided(devicePtr(dst), dst.dtype, contiguousStrides(dst.shape), src, 'f32', contiguousStrides(dst.shape), dst.shape);
    try {
      const dkn = zeroed(kNope.size), dkp = zeroed(kPe.size), dv = zeroed(v.size);
      const args = this.bwdArgs.ptr(0, devicePtr(qNope)).ptr(1, devicePtr(qPe)).ptr(2, devicePtr(kNope)).ptr(3, devicePtr(kPe)).ptr(4, devicePtr(v))
        .ptr(5, devicePtr(o)).ptr(6, devicePtr(dout)).ptr(7, devicePtr(lse)).ptr(8, devicePtr(grads.dqNope)).ptr(9, devicePtr(grads.dqPe))
        .ptr(10, dkn).ptr(11, dkp).ptr(12, dv).i32(13, Sq).i32(14, Skv).i32(15, H).i32(16, Dn).i32(17, Dr).i32(18, Dv).f32(19, opts.scale)
        .i32(20, opts.causal ? 1 : 0);
      this.file.kernel(`mla_generic_bwd_${qNope.dtype}`).launch([Sq, H, B], [32, 1, 1], 0, args);
      toOut(grads.dkNope, dkn);
      toOut(grads.dkPe, dkp);
      toOut(grads.dv, dv);
    } finally {
      for (const b of scratch) this.allocator.free(b);
    }
  }
}
