// MLA attention on CUDA: the host side of kernels/mla_attention_fwd.cu and mla_attention_bwd.cu
// (FlashAttention-2 style on mma.sync; sm_80 and later). The kernels take the five MLA pieces
// as they are (q_nope, q_pe, k_nope, k_pe shared by every head, v) and build the 192-wide q and
// k in shared memory, so no concatenated copy exists in device memory. On sm_90a (H100/H200)
// the forward and the backward's dK/dV/dQ kernel are the wgmma versions
// (mla_attention_fwd_hopper.cu, mla_attention_bwd_hopper.cu); the rest is shared.
//
// Shapes (B batch, S sequence, H heads; bf16, contiguous BSHD):
//   qNope_BSHD [B,S,H,128]  qPe_BSHD [B,S,H,64]  kNope_BSHD [B,S,H,128]  kPe_BS1D [B,S,1,64]
//   v_BSHD [B,S,H,128]  o_BSHD [B,S,H,128]  lse_BHS [B,H,S] f32 (natural log)
// Backward scratch (from the caching allocator, freed in stream order when the call returns):
//   D_BHS [B,H,S] f32 = rowsum(dO∘O); fast mode: dqAccum_BSHD [B,S,H,192] f32 and
//   dkPe_BSD [B,S,64] f32 (atomics); deterministic mode: dkPeHeads_BSHD [B,S,H,64] f32.
//
// Fast mode adds dQ into f32 with atomics (run-to-run differences of rounding size);
// deterministic mode computes dQ in a separate pass per query tile and sums dk_pe over heads
// in a fixed order, so two runs give identical bits (1-10% slower on an H100, b=1 h=16).
import { bytesPerElement } from '../../tensor/dtype.js';
import type { Tensor } from '../../tensor/tensor.js';
import type { AttentionOptions } from '../backend.js';
import type { CachingAllocator, GpuBlock } from './allocator.js';
import type { CudaContext } from './context.js';
import { KernelArgs, loadModule, type CudaKernel } from './module.js';
import { TensorMapSlots, type TiledMap } from './tensor_map.js';

const D_NOPE = 128;
const D_ROPE = 64;
const D_V = 128;
const D_QK = D_NOPE + D_ROPE;
/** Query and key rows per tile of the backward kernels (TILE in mla_attention_common.cuh). */
const TILE = 64;
/** Query rows per forward block: 4 warps × MLA_FWD_MT (2) m-tiles of 16 (mla_attention_fwd.cu). */
const FWD_ROWS = 128;
// Dynamic shared memory per block; the .cu files static_assert the same numbers.
const FWD_SMEM = 94208;
const DKDV_SMEM = 148480;
const DQ_SMEM = 138240;
const FWD_THREADS = 128;
// The Hopper forward (mla_attention_fwd_hopper.cu: wgmma, a producer and two consumer
// warpgroups, 128 query rows per block); sm_90a only.
const HOP_FWD_ROWS = 128;
const HOP_FWD_THREADS = 384;
const HOP_FWD_SMEM = 214088;
// The Hopper backward's dK/dV/dQ kernel (mla_attention_bwd_hopper.cu: 128 keys per block; the
// arguments of mla_attention_bwd_dkdv with tensor maps in place of the six input pointers);
// sm_90a only. MOETRAIN_MLA_KERNELS=mma selects the mma.sync kernels on Hopper too (for
// side-by-side comparisons).
const HOP_BWD_KEYS = 128;
const HOP_BWD_QUERIES = 64; // query rows per step (one TMA box of q_nope, q_pe, dout)
const HOP_BWD_DQ_ROWS = 16; // query rows per dQ reduce-add box (each warp adds its own rows)
const HOP_BWD_THREADS = 384;
const HOP_BWD_SMEM = 231464;
const BWD_THREADS = 256;
const PRE_THREADS = 256; // one warp per (b, s, h) row
const FINISH_THREADS = 128;

export interface MlaOptions extends AttentionOptions {
  /** The mma.sync kernels even where the Hopper ones apply (side-by-side checks). Default false. */
  simple?: boolean;
}

export interface MlaBackwardOptions extends MlaOptions {
  /** Identical bits on every run (no atomics); slower. Default false. */
  deterministic?: boolean;
}

export interface MlaGrads { dqNope: Tensor; dqPe: Tensor; dkNope: Tensor; dkPe: Tensor; dv: Tensor }

/** Device address of a tensor's first element (any buffer with a bigint `ptr`). */
function addressOf(t: Tensor): bigint {
  const buf = t.storage.buffer as { ptr?: unknown };
  if (typeof buf.ptr !== 'bigint') throw new Error(`internal: ${t} is not CUDA memory`);
  return buf.ptr + BigInt(t.offset * bytesPerElement(t.dtype));
}

/** The kernels of one context and a reusable argument buffer per kernel. */
class MlaKernels {
  readonly fwd: CudaKernel;
  /** The wgmma forward on sm_90a (H100/H200), else null. */
  readonly fwdHopper: CudaKernel | null;
  readonly pre: CudaKernel;
  readonly dkdv: CudaKernel;
  /** The wgmma dK/dV/dQ kernel on sm_90a, else null. */
  readonly dkdvHopper: CudaKernel | null;
  readonly dq: CudaKernel;
  readonly finish: CudaKernel;
  readonly fwdArgs = new KernelArgs(11);
  /** The Hopper forward's arguments: five tensor maps (q_nope, q_pe, k_nope, k_pe, v), then as fwdArgs. */
  readonly fwdHopperArgs = new KernelArgs(11, [0, 1, 2, 3, 4]);
  readonly fwdHopperMaps: TensorMapSlots;
  readonly preArgs = new KernelArgs(8);
  readonly dkdvArgs = new KernelArgs(17);
  /** The Hopper backward's arguments: six tensor maps (q_nope, q_pe, k_nope, k_pe, v, dout), then as dkdvArgs. */
  readonly dkdvHopperArgs = new KernelArgs(18, [0, 1, 2, 3, 4, 5, 17]);
  readonly dkdvHopperMaps: TensorMapSlots;
  readonly dqArgs = new KernelArgs(14);
  readonly finishArgs = new KernelArgs(8);

  constructor(ctx: CudaContext) {
    if (ctx.computeCapability[0] < 8) {
      throw new Error(`MLA attention needs a GPU of compute capability 8.0 or later (bf16 tensor cores); ${ctx.name} is ${ctx.computeCapability.join('.')}`);
    }
    const fwdModule = loadModule(ctx, 'mla_attention_fwd.cu');
    const bwdModule = loadModule(ctx, 'mla_attention_bwd.cu');
    this.fwd = fwdModule.kernel('mla_attention_fwd');
    this.pre = bwdModule.kernel('mla_attention_bwd_preprocess');
    this.dkdv = bwdModule.kernel('mla_attention_bwd_dkdv');
    this.dq = bwdModule.kernel('mla_attention_bwd_dq');
    this.finish = bwdModule.kernel('mla_attention_bwd_finish');
    this.fwd.setMaxDynamicShared(FWD_SMEM);
    // wgmma and setmaxnreg exist on sm_90a only (not on later "a" targets).
    const hopper = ctx.arch === 'sm_90a' && process.env.MOETRAIN_MLA_KERNELS !== 'mma';
    this.fwdHopper = hopper ? loadModule(ctx, 'mla_attention_fwd_hopper.cu').kernel('mla_attention_fwd_hopper') : null;
    this.fwdHopper?.setMaxDynamicShared(HOP_FWD_SMEM);
    this.fwdHopperMaps = new TensorMapSlots(ctx.driver, this.fwdHopperArgs);
    this.dkdvHopper = hopper ? loadModule(ctx, 'mla_attention_bwd_hopper.cu').kernel('mla_attention_bwd_dkdv_hopper') : null;
    this.dkdvHopper?.setMaxDynamicShared(HOP_BWD_SMEM);
    this.dkdvHopperMaps = new TensorMapSlots(ctx.driver, this.dkdvHopperArgs);
    this.dkdv.setMaxDynamicShared(DKDV_SMEM);
    this.dq.setMaxDynamicShared(DQ_SMEM);
  }
}

const kernelsOfContext = new WeakMap<CudaContext, MlaKernels>();

function kernelsFor(ctx: CudaContext): MlaKernels {
  let k = kernelsOfContext.get(ctx);
  if (!k) kernelsOfContext.set(ctx, (k = new MlaKernels(ctx)));
  return k;
}

interface Dims { B: number; S: number; H: number }

function expectTensor(op: string, name: string, t: Tensor, shape: readonly number[], dtype: 'bf16' | 'f32', layout: string): void {
  if (t.dtype !== dtype) {
    throw new Error(`${op}: ${name} is ${t.dtype}; the CUDA kernels take ${dtype} here (cast ${name} to ${dtype})`);
  }
  if (t.rank !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new Error(`${op}: ${name} has shape [${t.shape}], expected ${layout} = [${shape}]`);
  }
  if (!t.isContiguous()) throw new Error(`${op}: ${name} must be contiguous (${layout}); make a contiguous copy first`);
  if (addressOf(t) % 16n !== 0n) {
    throw new Error(`${op}: ${name} starts at a 16-byte-misaligned address (offset ${t.offset} elements); the kernels read 16-byte pieces, so pass a tensor whose offset is a multiple of ${16 / bytesPerElement(dtype)} elements`);
  }
}

/** Checks the five MLA inputs and returns B, S, H. */
function inputDims(op: string, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor): Dims {
  if (qNope.rank !== 4) throw new Error(`${op}: qNope has shape [${qNope.shape}], expected [B,S,H,${D_NOPE}]`);
  const [B, S, H] = qNope.shape as [number, number, number, number];
  expectTensor(op, 'qNope', qNope, [B, S, H, D_NOPE], 'bf16', `[B,S,H,${D_NOPE}]`);
  expectTensor(op, 'qPe', qPe, [B, S, H, D_ROPE], 'bf16', `[B,S,H,${D_ROPE}]`);
  expectTensor(op, 'kNope', kNope, [B, S, H, D_NOPE], 'bf16', `[B,S,H,${D_NOPE}]`);
  expectTensor(op, 'kPe', kPe, [B, S, 1, D_ROPE], 'bf16', `[B,S,1,${D_ROPE}] (one rope key shared by every head)`);
  expectTensor(op, 'v', v, [B, S, H, D_V], 'bf16', `[B,S,H,${D_V}]`);
  if (B > 65535 || H > 65535) throw new Error(`${op}: batch ${B} and heads ${H} must each be at most 65535 (grid limits); split the batch`);
  if (B * S * H > 2 ** 31 - 1) throw new Error(`${op}: B·S·H = ${B * S * H} rows exceed 2^31-1; split the batch`);
  return { B, S, H };
}

function checkScale(op: string, opts: AttentionOptions): void {
  if (!Number.isFinite(opts.scale) || opts.scale <= 0) throw new Error(`${op}: scale ${opts.scale} must be a positive finite number (usually 1/sqrt(192))`);
}

/** o = softmax(scale·q·kᵀ, causal mask) · v and lse, with q = (qNope|qPe), k = (kNope|kPe). */
export function mlaAttentionForward(
  ctx: CudaContext, o: Tensor, lse: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, opts: MlaOptions,
): void {
  const op = 'mlaAttention';
  const { B, S, H } = inputDims(op, qNope, qPe, kNope, kPe, v);
  checkScale(op, opts);
  expectTensor(op, 'o', o, [B, S, H, D_V], 'bf16', `[B,S,H,${D_V}]`);
  expectTensor(op, 'lse', lse, [B, H, S], 'f32', '[B,H,S]');
  if (B * S * H === 0) return;
  const k = kernelsFor(ctx);
  // Arguments 5-10, the same for the mma.sync kernel and the Hopper one.
  const fwdTail = (args: KernelArgs): KernelArgs =>
    args.ptr(5, addressOf(o)).ptr(6, addressOf(lse)).i32(7, S).i32(8, H).f32(9, opts.scale).i32(10, opts.causal ? 1 : 0);
  if (k.fwdHopper && opts.simple !== true) {
    const maps = k.fwdHopperMaps;
    const rows = HOP_FWD_ROWS;
    maps.set(0, headRows(addressOf(qNope), B, S, H, D_NOPE, rows), `${op}: qNope`);
    maps.set(1, headRows(addressOf(qPe), B, S, H, D_ROPE, rows), `${op}: qPe`);
    maps.set(2, headRows(addressOf(kNope), B, S, H, D_NOPE, rows), `${op}: kNope`);
    maps.set(3, sharedRows(addressOf(kPe), B, S, D_ROPE, rows), `${op}: kPe`);
    maps.set(4, headRows(addressOf(v), B, S, H, D_V, rows), `${op}: v`);
    k.fwdHopper.launch([H, Math.ceil(S / HOP_FWD_ROWS), B], [HOP_FWD_THREADS, 1, 1], HOP_FWD_SMEM, fwdTail(k.fwdHopperArgs));
    return;
  }
  const args = fwdTail(k.fwdArgs.ptr(0, addressOf(qNope)).ptr(1, addressOf(qPe)).ptr(2, addressOf(kNope)).ptr(3, addressOf(kPe))
    .ptr(4, addressOf(v)));
  k.fwd.launch([Math.ceil(S / FWD_ROWS), H, B], [FWD_THREADS, 1, 1], FWD_SMEM, args);
}

/**
 * Tensor map of a bf16 [B,S,H,width] tensor for the Hopper kernels: dims (width, H, S, B), one
 * copy = 64 columns × `rows` positions of one head, 128-byte swizzled. Positions past S are
 * outside the map, so a partial last tile arrives zero-filled.
 */
function headRows(address: bigint, B: number, S: number, H: number, width: number, rows: number): TiledMap {
  const row = width * 2;
  return { dtype: 'bf16', address, dims: [width, H, S, B], strides: [row, H * row, S * H * row], box: [64, 1, rows, 1], swizzle128: true };
}

/** Tensor map of the bf16 [B,S,1,64] rope key shared by every head: dims (64, S, B). */
function sharedRows(address: bigint, B: number, S: number, width: number, rows: number): TiledMap {
  return { dtype: 'bf16', address, dims: [width, S, B], strides: [width * 2, S * width * 2], box: [64, rows, 1], swizzle128: true };
}

/** Gradients of mlaAttentionForward (overwritten); dkPe [B,S,1,64] is summed over heads. */
export function mlaAttentionBackward(
  ctx: CudaContext, alloc: CachingAllocator, grads: MlaGrads, dout: Tensor,
  qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, o: Tensor, lse: Tensor, opts: MlaBackwardOptions,
): void {
  const op = 'mlaAttentionBackward';
  const { B, S, H } = inputDims(op, qNope, qPe, kNope, kPe, v);
  checkScale(op, opts);
  expectTensor(op, 'o', o, [B, S, H, D_V], 'bf16', `[B,S,H,${D_V}]`);
  expectTensor(op, 'dout', dout, [B, S, H, D_V], 'bf16', `[B,S,H,${D_V}]`);
  expectTensor(op, 'lse', lse, [B, H, S], 'f32', '[B,H,S]');
  expectTensor(op, 'dqNope', grads.dqNope, [B, S, H, D_NOPE], 'bf16', `[B,S,H,${D_NOPE}]`);
  expectTensor(op, 'dqPe', grads.dqPe, [B, S, H, D_ROPE], 'bf16', `[B,S,H,${D_ROPE}]`);
  expectTensor(op, 'dkNope', grads.dkNope, [B, S, H, D_NOPE], 'bf16', `[B,S,H,${D_NOPE}]`);
  expectTensor(op, 'dkPe', grads.dkPe, [B, S, 1, D_ROPE], 'bf16', `[B,S,1,${D_ROPE}]`);
  expectTensor(op, 'dv', grads.dv, [B, S, H, D_V], 'bf16', `[B,S,H,${D_V}]`);
  if (B * S * H === 0) return;
  const k = kernelsFor(ctx);
  const deterministic = opts.deterministic === true;
  const rows = B * S * H;
  const tiles = Math.ceil(S / TILE);
  const scratch: GpuBlock[] = [];
  const take = (bytes: number): bigint => { const b = alloc.alloc(bytes); scratch.push(b); return b.ptr; };
  try {
    const dSum = take(rows * 4);
    const dqAccum = deterministic ? 0n : take(rows * D_QK * 4);
    const dkPeF32 = take((deterministic ? rows : B * S) * D_ROPE * 4);
    const [pQn, pQp, pKn, pKp, pV, pDo, pLse] = [qNope, qPe, kNope, kPe, v, dout, lse].map(addressOf) as
      [bigint, bigint, bigint, bigint, bigint, bigint, bigint];
    const causal = opts.causal ? 1 : 0;
    // Arguments 6-16, the same for the mma.sync kernel and the Hopper one.
    const dkdvTail = (args: KernelArgs): KernelArgs => args.ptr(6, pLse).ptr(7, dSum)
      .ptr(8, addressOf(grads.dkNope)).ptr(9, addressOf(grads.dv)).ptr(10, dqAccum).ptr(11, dkPeF32)
      .i32(12, S).i32(13, H).f32(14, opts.scale).i32(15, causal).i32(16, deterministic ? 1 : 0);

    k.pre.launch([Math.ceil(rows / (PRE_THREADS / 32)), 1, 1], [PRE_THREADS, 1, 1], 0,
      k.preArgs.ptr(0, addressOf(o)).ptr(1, pDo).ptr(2, dSum).ptr(3, dqAccum).ptr(4, deterministic ? 0n : dkPeF32)
        .i32(5, rows).i32(6, S).i32(7, H));
    // Both kernels skip dQ when dqAccum is null (deterministic mode: the dq pass below makes it).
    if (k.dkdvHopper && opts.simple !== true) {
      // The Hopper kernel copies q, dO (64 queries per step) and k, v (its 128 keys) with TMA.
      const maps = k.dkdvHopperMaps;
      maps.set(0, headRows(pQn, B, S, H, D_NOPE, HOP_BWD_QUERIES), `${op}: qNope`);
      maps.set(1, headRows(pQp, B, S, H, D_ROPE, HOP_BWD_QUERIES), `${op}: qPe`);
      maps.set(2, headRows(pKn, B, S, H, D_NOPE, HOP_BWD_KEYS), `${op}: kNope`);
      maps.set(3, sharedRows(pKp, B, S, D_ROPE, HOP_BWD_KEYS), `${op}: kPe`);
      maps.set(4, headRows(pV, B, S, H, D_V, HOP_BWD_KEYS), `${op}: v`);
      maps.set(5, headRows(pDo, B, S, H, D_V, HOP_BWD_QUERIES), `${op}: dout`);
      // dQ leaves as bulk reduce-adds into dqAccum [B,S,H,192] f32: boxes of 64 columns × 16
      // queries (each warp of a consumer adds its own rows), seen as 5-D (32 columns, 6 blocks of
      // 32, H, S, B) so that a box is 128-byte lines, as the swizzle needs. Deterministic mode has
      // no dqAccum; the kernel then skips dQ and never reads this slot, so it keeps whatever map
      // it held.
      if (!deterministic) {
        maps.set(17, { dtype: 'f32', address: dqAccum, dims: [32, D_QK / 32, H, S, B],
          strides: [128, D_QK * 4, H * D_QK * 4, S * H * D_QK * 4],
          box: [32, 2, 1, HOP_BWD_DQ_ROWS, 1], swizzle128: true }, `${op}: dq accumulator`);
      }
      k.dkdvHopper.launch([H, Math.ceil(S / HOP_BWD_KEYS), B], [HOP_BWD_THREADS, 1, 1], HOP_BWD_SMEM, dkdvTail(k.dkdvHopperArgs));
    } else {
      const args = dkdvTail(k.dkdvArgs.ptr(0, pQn).ptr(1, pQp).ptr(2, pKn).ptr(3, pKp).ptr(4, pV).ptr(5, pDo));
      k.dkdv.launch([tiles, H, B], [BWD_THREADS, 1, 1], DKDV_SMEM, args);
    }
    if (deterministic) {
      k.dq.launch([tiles, H, B], [BWD_THREADS, 1, 1], DQ_SMEM,
        k.dqArgs.ptr(0, pQn).ptr(1, pQp).ptr(2, pKn).ptr(3, pKp).ptr(4, pV).ptr(5, pDo).ptr(6, pLse).ptr(7, dSum)
          .ptr(8, addressOf(grads.dqNope)).ptr(9, addressOf(grads.dqPe)).i32(10, S).i32(11, H).f32(12, opts.scale).i32(13, causal));
    }
    k.finish.launch([B * S, 1, 1], [FINISH_THREADS, 1, 1], 0,
      k.finishArgs.ptr(0, dqAccum).ptr(1, addressOf(grads.dqNope)).ptr(2, addressOf(grads.dqPe)).ptr(3, dkPeF32)
        .ptr(4, addressOf(grads.dkPe)).i32(5, H).f32(6, opts.scale).i32(7, deterministic ? 1 : 0));
  } finally {
    // Stream order: the next user of these blocks is queued behind the kernels above.
    for (const b of scratch) alloc.free(b);
  }
}
