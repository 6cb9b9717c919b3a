// Which MLA attention kernels run on a GPU: the one place that decides, from the device, the
// tensors' dtype and head widths, and what was asked for (the train config's mla_kernels, or
// the MOETRAIN_MLA_KERNELS override that backend/select.ts reads).
//   hopper   wgmma + TMA kernels (mla_attention_*_hopper.cu): sm_90a only (H100/H200)
//   mma      mma.sync kernels (mla_attention_fwd.cu / _bwd.cu): compute capability 8.0 or later
//   generic  any widths, f32 or bf16 (mla_attention_generic.cu): the tiny demo model
// The tensor-core sets (hopper, mma) take bf16 at DeepSeek-V2's widths 128/64/128 only.
import type { DType } from '../../../tensor/dtype.js';
import { MLA_COMMON_DEFINES } from './mla_attention.js';

/** What a run asks for: "auto" takes the fastest set that applies. */
export type MlaKernelsRequest = 'auto' | 'hopper' | 'mma' | 'generic';
export type MlaKernels = 'hopper' | 'mma' | 'generic';

export interface MlaKernelQuery {
  /** NVRTC target of the device, e.g. "sm_90a". */
  arch: string;
  computeCapability: readonly [number, number];
  dtype: DType;
  dNope: number;
  dRope: number;
  dV: number;
  request: MlaKernelsRequest;
}

export function chooseMlaKernels(q: MlaKernelQuery): MlaKernels {
  const { MLA_D_NOPE, MLA_D_ROPE, MLA_D_V } = MLA_COMMON_DEFINES;
  const tensorCoreShape = q.dtype === 'bf16' && q.dNope === MLA_D_NOPE && q.dRope === MLA_D_ROPE && q.dV === MLA_D_V;
  const mma = q.computeCapability[0] >= 8;
  // wgmma and setmaxnreg exist on sm_90a only (not on later "a" targets).
  const hopper = q.arch === 'sm_90a';
  const cannot = (set: string, needs: string): Error => new Error(
    `MLA attention kernels "${q.request}" were asked for (train config mla_kernels or MOETRAIN_MLA_KERNELS), but the ${set} ` +
    `kernels need ${needs}; this run has ${q.dtype} heads of widths ${q.dNope}/${q.dRope}/${q.dV} on ${q.arch}. Use "auto" or "generic"`);
  switch (q.request) {
    case 'auto':
      if (!tensorCoreShape) return 'generic';
      return hopper ? 'hopper' : mma ? 'mma' : 'generic';
    case 'hopper':
      if (!tensorCoreShape || !hopper) throw cannot('Hopper', `bf16 heads of widths ${MLA_D_NOPE}/${MLA_D_ROPE}/${MLA_D_V} on an sm_90a GPU (H100/H200)`);
      return 'hopper';
    case 'mma':
      if (!tensorCoreShape || !mma) throw cannot('mma.sync', `bf16 heads of widths ${MLA_D_NOPE}/${MLA_D_ROPE}/${MLA_D_V} on a GPU of compute capability 8.0 or later`);
      return 'mma';
    case 'generic':
      return 'generic';
    default:
      return q.request satisfies never;
  }
}
