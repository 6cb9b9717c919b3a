// Launcher of the tensor-core MLA attention kernels: kernels/mla_attention_fwd.cu and
// mla_attention_bwd.cu (FlashAttention-2 style on mma.sync; sm_80 and later), and on sm_90a
// (H100/H200) mla_attention_fwd_hopper.cu and mla_attention_bwd_hopper.cu (wgmma and TMA), which
// replace the forward and the backward's dK/dV/dQ kernel; the backward's preprocess and finish
// kernels are shared. The caller passes which set runs (mla_kernel_choice.ts chooses). The
// kernels take the five MLA pieces as they are (q_nope, q_pe, k_nope, k_pe shared by every
// head, v) and build the 192-wide q and k in shared memory, so no concatenated copy exists.
//
// Shapes (B batch, Sq query and Skv key positions, H heads; bf16, contiguous BSHD):
//   qNope [B,Sq,H,128]  qPe [B,Sq,H,64]  kNope [B,Skv,H,128]  kPe [B,Skv,1,64]
//   v [B,Skv,H,128]  o [B,Sq,H,128]  lse [B,H,Sq] f32 (natural log)
// qNope, kNope and v may also be views of a wider [B,S,H,rs] tensor (the model's q and kv
// projections, rs 192 and 256): the Hopper kernels' tensor maps take the row stride rs, so the
// split costs no copy (three fewer 33 MB copies a layer at the bench's 8192 tokens); the mma.sync
// kernels read by pointer and take them contiguous (CudaBackend copies views for them).
// Sq ≠ Skv is a non-causal block (ring attention's steps); causal needs Sq = Skv.
// Backward scratch (from the caching allocator, freed in stream order when the call returns):
//   D [B,H,Sq] f32 = rowsum(dO∘O); fast mode: dqAccum [B,Sq,H,192] f32 and dkPe [B,Skv,64] f32
//   (atomics); deterministic mode: dkPeHeads [B,Skv,H,64] f32.
//
// Fast mode adds dQ into f32 with atomics (run-to-run differences of rounding size);
// deterministic mode computes dQ in a separate pass per query tile and sums dk_pe over heads
// in a fixed order, so two runs give identical bits (slower).
//
// The -D defines below are every number a kernel and this launcher share; each kernel derives
// its layout from them and static_asserts the shared-memory size given here. Profiling and
// variant builds (other -D switches) are listed in bench/attention_notes.md, "Build switches".
import { headRowStride } from '../../mla_head_rows.js';
import { bytesPerElement } from '../../../tensor/dtype.js';
import type { Tensor } from '../../../tensor/tensor.js';
import type { AttentionOptions, MlaBlockEnds, RingSlots } from '../../backend.js';
import { checkBlockRows } from '../../mla_backward_block.js';
import type { CachingAllocator, GpuBlock } from '../runtime/allocator.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { TensorMapSlots, type TiledMap } from '../runtime/tensor_map.js';

/** Head widths and the query/key tile of the mma.sync backward (mla_attention_common.cuh). */
export const MLA_COMMON_DEFINES = { MLA_D_NOPE: 128, MLA_D_ROPE: 64, MLA_D_V: 128, MLA_TILE: 64 } as const;
/**
 * mla_attention_fwd.cu: threads per block, 16-row m-tiles per warp (query rows per block =
 * threads/32 · 16 · MT), key rows per tile, lazy rescaling, dynamic shared memory.
 */
export const MLA_FWD_DEFINES = {
  ...MLA_COMMON_DEFINES, MLA_FWD_THREADS: 128, MLA_FWD_MT: 2, MLA_FWD_BN: 32, MLA_FWD_LAZY_RESCALE: 1, MLA_FWD_SMEM: 94208,
} as const;
/** mla_attention_bwd.cu: block sizes of dkdv/dq, preprocess (one warp per row) and finish; shared memory of dkdv and dq. */
export const MLA_BWD_DEFINES = {
  ...MLA_COMMON_DEFINES, MLA_BWD_THREADS: 256, MLA_BWD_PRE_THREADS: 256, MLA_BWD_FINISH_THREADS: 128,
  MLA_BWD_DKDV_SMEM: 148480, MLA_BWD_DQ_SMEM: 138240,
} as const;
/** mla_attention_fwd_hopper.cu: a producer and two consumer warpgroups; query rows per block, key rows per tile. */
export const MLA_HOP_FWD_DEFINES = {
  ...MLA_COMMON_DEFINES, MLA_HOP_FWD_THREADS: 384, MLA_HOP_FWD_ROWS: 128, MLA_HOP_FWD_KEYS: 128, MLA_HOP_FWD_SMEM: 214104,
} as const;
/**
 * mla_attention_bwd_hopper.cu: keys per block, query rows per step (one TMA box of q_nope, q_pe,
 * dout), query rows per dQ reduce-add box (each warp adds its own rows).
 */
export const MLA_HOP_BWD_DEFINES = {
  ...MLA_COMMON_DEFINES, MLA_HOP_BWD_THREADS: 384, MLA_HOP_BWD_KEYS: 128, MLA_HOP_BWD_QUERIES: 64, MLA_HOP_BWD_DQ_ROWS: 16,
  MLA_HOP_BWD_SMEM: 231464,
} as const;

const { MLA_D_NOPE: D_NOPE, MLA_D_ROPE: D_ROPE, MLA_D_V: D_V, MLA_TILE: TILE } = MLA_COMMON_DEFINES;
const D_QK = D_NOPE + D_ROPE;
const FWD_ROWS = (MLA_FWD_DEFINES.MLA_FWD_THREADS / 32) * 16 * MLA_FWD_DEFINES.MLA_FWD_MT;

/** The tensor-core kernel sets: Hopper's wgmma kernels or the mma.sync ones. */
export type MlaTensorCoreKernels = 'hopper' | 'mma';

export interface MlaForwardOptions extends AttentionOptions {
  /**
   * Hopper forward only: how many CTAs walk the n_items = H·ceil(Sq/128)·B query tiles. true
   * (default): one per SM (the kernel's shared memory fits one), each taking several tiles, so
   * one tile's loads overlap the previous one's last GEMMs and stores; false: one CTA per tile;
   * a number n: at most n CTAs (tests force several tiles per CTA on small shapes).
   */
  persistent?: boolean | number;
  /** Hopper only: ring attention's whole forward in this launch, k/v in slots (RingSlots). */
  ring?: RingSlots;
}

export interface MlaBackwardOptions extends AttentionOptions {
  /** Identical bits on every run (no atomics); slower. Default false. */
  deterministic?: boolean;
}

export interface MlaGrads { dqNope: Tensor; dqPe: Tensor; dkNope: Tensor; dkPe: Tensor; dv: Tensor }
/** The key side's gradients of one block (backwardBlock): dkPe summed over heads. */
export type MlaKvGrads = Pick<MlaGrads, 'dkNope' | 'dkPe' | 'dv'>;

/**
 * B batch rows of q (the k/v side has slots·B), positions and heads; slots: ring slots (1: no
 * ring); rs: the elements from one head's row to the next of q_nope, k_nope and v (their width
 * when contiguous; wider when they are views of the projections they were split from).
 */
interface Dims { B: number; Sq: number; Skv: number; H: number; ring?: RingSlots; rs: { qNope: number; kNope: number; v: number } }

/** How many slots of B batch rows the k/v side has. */
const slotsOf = (d: Dims): number => d.ring?.ranks ?? 1;

/** The ring arguments every Hopper launch ends with: slots, rank, c (1, 0, 0 without a ring). */
function ringArgs(args: KernelArgs, first: number, d: Dims): KernelArgs {
  return args.i32(first, slotsOf(d)).i32(first + 1, d.ring?.rank ?? 0).i32(first + 2, d.ring ? d.Sq / 2 : 0);
}

/**
 * Key tiles of `keys` rows over every slot (the backward's grid y; its kernel's key_tile). The
 * rule is parallel/zigzag.ts's ringStep (a lower rank's first c keys, a higher rank's 2c), which
 * backend/ may not import (a layer above it); the kernels hold it once, in ring_slot_view.
 */
function ringKeyTiles(d: Dims, keys: number): number {
  let tiles = Math.ceil(d.Skv / keys);
  if (d.ring) for (let j = 1; j < d.ring.ranks; j++) {
    const src = (d.ring.rank - j + d.ring.ranks) % d.ring.ranks;
    tiles += (src < d.ring.rank ? d.Sq / 2 : d.Sq) / keys;
  }
  return tiles;
}

/**
 * Checks a bf16 [B,S,H,width] input that may be a view of a wider [B,S,H,rs] tensor (the Hopper
 * kernels read it through a tensor map, whose row stride is rs; the model passes q_nope, k_nope
 * and v as views of their projections, so their split costs no copy); returns rs.
 */
function expectHeadRows(op: string, name: string, t: Tensor, shape: readonly [number, number, number, number], layout: string): number {
  if (t.isContiguous()) { expectTensor(op, name, t, shape, 'bf16', layout); return shape[3]; }
  if (t.dtype !== 'bf16') throw new Error(`${op}: ${name} is ${t.dtype}; the CUDA kernels take bf16 here (cast ${name} to bf16)`);
  if (t.rank !== 4 || t.shape.some((d, i) => d !== shape[i])) throw new Error(`${op}: ${name} has shape [${t.shape}], expected ${layout} = [${shape}]`);
  const rs = headRowStride(t);
  if (rs === null) {
    throw new Error(`${op}: ${name} has strides [${t.strides}]; the kernels take ${layout} contiguous, or a view of [B,S,H,rs] with rs ≥ ${shape[3]} a multiple of 8 (make a contiguous copy first)`);
  }
  if (devicePtr(t) % 16n !== 0n) throw new Error(`${op}: ${name} starts at a 16-byte-misaligned address (offset ${t.offset} elements)`);
  return rs;
}

function expectTensor(op: string, name: string, t: Tensor, shape: readonly number[], dtype: 'bf16' | 'f32', layout: string): void {
  if (t.dtype !== dtype) {
    throw new Error(`${op}: ${name} is ${t.dtype}; the CUDA kernels take ${dtype} here (cast ${name} to ${dtype})`);
  }
  if (t.rank !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new Error(`${op}: ${name} has shape [${t.shape}], expected ${layout} = [${shape}]`);
  }
  if (!t.isContiguous()) throw new Error(`${op}: ${name} must be contiguous (${layout}); make a contiguous copy first`);
  if (devicePtr(t) % 16n !== 0n) {
    throw new Error(`${op}: ${name} starts at a 16-byte-misaligned address (offset ${t.offset} elements); the kernels read 16-byte pieces, so pass a tensor whose offset is a multiple of ${16 / bytesPerElement(dtype)} elements`);
  }
}

/**
 * Checks the five MLA inputs and returns B, Sq (q's positions), Skv (k's and v's), H. With ring
 * slots the k/v tensors hold ring.ranks slots of B batch rows (RingSlots), which the Hopper
 * kernels walk in one launch: causal over the rank's 2c tokens, c a multiple of 128.
 */
function inputDims(op: string, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, causal: boolean, ring?: RingSlots): Dims {
  if (qNope.rank !== 4) throw new Error(`${op}: qNope has shape [${qNope.shape}], expected [B,Sq,H,${D_NOPE}]`);
  if (kNope.rank !== 4) throw new Error(`${op}: kNope has shape [${kNope.shape}], expected [B,Skv,H,${D_NOPE}]`);
  const [B, Sq, H] = qNope.shape as [number, number, number, number];
  const Skv = kNope.shape[1]!;
  const n = ring?.ranks ?? 1, kvB = n === 1 ? 'B' : `${n}·B`;
  const rsQ = expectHeadRows(op, 'qNope', qNope, [B, Sq, H, D_NOPE], `[B,Sq,H,${D_NOPE}]`);
  expectTensor(op, 'qPe', qPe, [B, Sq, H, D_ROPE], 'bf16', `[B,Sq,H,${D_ROPE}]`);
  const rsK = expectHeadRows(op, 'kNope', kNope, [n * B, Skv, H, D_NOPE], `[${kvB},Skv,H,${D_NOPE}]`);
  expectTensor(op, 'kPe', kPe, [n * B, Skv, 1, D_ROPE], 'bf16', `[${kvB},Skv,1,${D_ROPE}] (one rope key shared by every head)`);
  const rsV = expectHeadRows(op, 'v', v, [n * B, Skv, H, D_V], `[${kvB},Skv,H,${D_V}]`);
  if (ring) {
    const { ranks, rank } = ring;
    if (!(Number.isInteger(ranks) && ranks >= 2 && Number.isInteger(rank) && rank >= 0 && rank < ranks)) {
      throw new Error(`${op}: ring slots of rank ${rank} among ${ranks} ranks; give 0 ≤ rank < ranks, ranks ≥ 2`);
    }
    if (!causal || Sq !== Skv || Sq % 256 !== 0) {
      throw new Error(`${op}: a ring launch is causal over the rank's 2c tokens with c a multiple of 128, got q ${Sq} × kv ${Skv}, causal ${causal}; use one launch per ring step`);
    }
  }
  if (causal && Sq !== Skv) {
    throw new Error(`${op}: a causal mask needs as many queries as keys, got q ${Sq} × kv ${Skv} positions; pass causal: false for a block of other positions`);
  }
  if (n * B > 65535 || H > 65535) throw new Error(`${op}: k/v batch rows ${n * B} and heads ${H} must each be at most 65535 (grid limits); split the batch`);
  const S = Math.max(Sq, n * Skv);
  if (B * S * H > 2 ** 31 - 1) throw new Error(`${op}: B·S·H = ${B * S * H} rows (S = ${S}, the longer of q and kv) exceed 2^31-1; split the batch`);
  return { B, Sq, Skv, H, ...(ring ? { ring } : {}), rs: { qNope: rsQ, kNope: rsK, v: rsV } };
}

/** The mma.sync kernels read q_nope, k_nope and v by pointer, contiguous (CudaBackend copies views first). */
function expectContiguousRows(op: string, d: Dims): void {
  if (d.rs.qNope !== D_NOPE || d.rs.kNope !== D_NOPE || d.rs.v !== D_V) {
    throw new Error(`internal: ${op}: the mma.sync kernels take contiguous q_nope, k_nope and v, got row strides ${d.rs.qNope}, ${d.rs.kNope}, ${d.rs.v}`);
  }
}

function checkScale(op: string, opts: AttentionOptions): void {
  if (!Number.isFinite(opts.scale) || opts.scale <= 0) throw new Error(`${op}: scale ${opts.scale} must be a positive finite number (usually 1/sqrt(192))`);
}

/**
 * Tensor map of a bf16 [B,S,H,width] tensor for the Hopper kernels: dims (width, H, S, B), one
 * copy = 64 columns × `rows` positions of one head, 128-byte swizzled. Positions past S are
 * outside the map, so a partial last tile arrives zero-filled. rs: elements from one head's row
 * to the next (width when contiguous; a view's wider stride otherwise).
 */
function headRows(address: bigint, B: number, S: number, H: number, width: number, rows: number, rs = width): TiledMap {
  const row = rs * 2;
  return { dtype: 'bf16', address, dims: [width, H, S, B], strides: [row, H * row, S * H * row], box: [64, 1, rows, 1], swizzle128: true };
}

/** Tensor map of the bf16 [B,S,1,64] rope key shared by every head: dims (64, S, B). */
function sharedRows(address: bigint, B: number, S: number, width: number, rows: number): TiledMap {
  return { dtype: 'bf16', address, dims: [width, S, B], strides: [width * 2, S * width * 2], box: [64, rows, 1], swizzle128: true };
}

/** The tensor-core MLA kernels of one context, each with its own argument buffer. */
export class MlaAttentionLauncher {
  private readonly fwdFile: KernelFile;
  private readonly bwdFile: KernelFile;
  private readonly fwdHopperFile: KernelFile;
  private readonly bwdHopperFile: KernelFile;
  private readonly fwdArgs = new KernelArgs(12);
  /**
   * The Hopper forward's arguments: five tensor maps (q_nope, q_pe, k_nope, k_pe, v), then as
   * fwdArgs, then B, the work counter and its value at the launch's start, then the ring slots.
   */
  private readonly fwdHopperArgs = new KernelArgs(18, [0, 1, 2, 3, 4]);
  private readonly fwdHopperMaps: TensorMapSlots;
  private readonly preArgs = new KernelArgs(9);
  private readonly dkdvArgs = new KernelArgs(18);
  /** The Hopper backward's arguments: six tensor maps (q_nope, q_pe, k_nope, k_pe, v, dout), then as dkdvArgs, then dq_accum's map, then the ring slots. */
  private readonly dkdvHopperArgs = new KernelArgs(22, [0, 1, 2, 3, 4, 5, 18]);
  private readonly dkdvHopperMaps: TensorMapSlots;
  private readonly dqArgs = new KernelArgs(15);
  private readonly finishArgs = new KernelArgs(10);
  /** The persistent Hopper forward's default CTA count. */
  private readonly smCount: number;
  /**
   * The persistent Hopper forward's work counter (one u32 its CTAs claim query tiles from; never
   * reset) and the value it holds once the launches queued so far have run: each launch with
   * fewer CTAs than tiles adds its tile count (the kernel header says why), mod 2^32. Launches
   * run in stream order (the context's one compute stream), so each starts where the last ended.
   */
  private readonly workCounter: GpuBlock;
  private workClaims = 0;

  constructor(ctx: CudaContext, private readonly allocator: CachingAllocator) {
    this.smCount = ctx.smCount;
    this.workCounter = allocator.alloc(4);
    ctx.fillWords(this.workCounter.ptr, 0, 1);
    this.fwdFile = new KernelFile(ctx, 'mla_attention_fwd.cu', MLA_FWD_DEFINES);
    this.bwdFile = new KernelFile(ctx, 'mla_attention_bwd.cu', MLA_BWD_DEFINES);
    this.fwdHopperFile = new KernelFile(ctx, 'mla_attention_fwd_hopper.cu', MLA_HOP_FWD_DEFINES);
    this.bwdHopperFile = new KernelFile(ctx, 'mla_attention_bwd_hopper.cu', MLA_HOP_BWD_DEFINES);
    this.fwdHopperMaps = new TensorMapSlots(ctx.driver, this.fwdHopperArgs);
    this.dkdvHopperMaps = new TensorMapSlots(ctx.driver, this.dkdvHopperArgs);
  }

  /** o = softmax(scale·q·kᵀ, causal mask or none) · v and lse, with q = (qNope|qPe), k = (kNope|kPe). */
  forward(kernels: MlaTensorCoreKernels, o: Tensor, lse: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor,
          opts: MlaForwardOptions): void {
    const op = 'mlaAttention';
    const d = inputDims(op, qNope, qPe, kNope, kPe, v, opts.causal, opts.ring);
    const { B, Sq, Skv, H } = d, n = slotsOf(d);
    if (opts.ring && kernels !== 'hopper') throw new Error(`${op}: ring slots in one launch need the Hopper kernels; use one launch per ring step`);
    checkScale(op, opts);
    expectTensor(op, 'o', o, [B, Sq, H, D_V], 'bf16', `[B,Sq,H,${D_V}]`);
    expectTensor(op, 'lse', lse, [B, H, Sq], 'f32', '[B,H,Sq]');
    if (B * Sq * H === 0) return;
    // No key at all: an empty softmax, which the kernels do not compute.
    if (Skv === 0) throw new Error(`${op}: kv has 0 positions (q ${Sq}); skip the call for an empty block`);
    // Arguments 5-11, the same for the mma.sync kernel and the Hopper one.
    const fwdTail = (args: KernelArgs): KernelArgs =>
      args.ptr(5, devicePtr(o)).ptr(6, devicePtr(lse)).i32(7, Sq).i32(8, Skv).i32(9, H).f32(10, opts.scale).i32(11, opts.causal ? 1 : 0);
    if (kernels === 'hopper') {
      const { MLA_HOP_FWD_THREADS: threads, MLA_HOP_FWD_ROWS: rows, MLA_HOP_FWD_KEYS: keys, MLA_HOP_FWD_SMEM: smem } = MLA_HOP_FWD_DEFINES;
      const k = this.fwdHopperFile.kernel('mla_attention_fwd_hopper');
      k.allowDynamicShared(smem, op);
      const maps = this.fwdHopperMaps;
      maps.set(0, headRows(devicePtr(qNope), B, Sq, H, D_NOPE, rows, d.rs.qNope), `${op}: qNope`);
      maps.set(1, headRows(devicePtr(qPe), B, Sq, H, D_ROPE, rows), `${op}: qPe`);
      maps.set(2, headRows(devicePtr(kNope), n * B, Skv, H, D_NOPE, keys, d.rs.kNope), `${op}: kNope`);
      maps.set(3, sharedRows(devicePtr(kPe), n * B, Skv, D_ROPE, keys), `${op}: kPe`);
      maps.set(4, headRows(devicePtr(v), n * B, Skv, H, D_V, keys, d.rs.v), `${op}: v`);
      // Work items: query tiles of one (head, batch); a 1-D grid of `ctas` walks them (kernel header).
      const items = H * Math.ceil(Sq / rows) * B;
      if (items > 2 ** 31 - 1) throw new Error(`${op}: H·ceil(Sq/${rows})·B = ${items} query tiles exceed the grid's 2^31-1; split the batch`);
      const persistent = opts.persistent ?? true;
      if (typeof persistent === 'number' && !(Number.isInteger(persistent) && persistent >= 1)) {
        throw new Error(`${op}: persistent: ${persistent} must be true, false or a whole number of CTAs ≥ 1`);
      }
      const ctas = persistent === false ? items : Math.min(items, persistent === true ? this.smCount : persistent);
      k.launch([ctas, 1, 1], [threads, 1, 1], smem,
        ringArgs(fwdTail(this.fwdHopperArgs).i32(12, B).ptr(13, this.workCounter.ptr).u32(14, this.workClaims), 15, d));
      if (ctas < items) this.workClaims = (this.workClaims + items) >>> 0;
      return;
    }
    expectContiguousRows(op, d);
    const k = this.fwdFile.kernel('mla_attention_fwd');
    k.allowDynamicShared(MLA_FWD_DEFINES.MLA_FWD_SMEM, op);
    const args = fwdTail(this.fwdArgs.ptr(0, devicePtr(qNope)).ptr(1, devicePtr(qPe)).ptr(2, devicePtr(kNope)).ptr(3, devicePtr(kPe))
      .ptr(4, devicePtr(v)));
    k.launch([Math.ceil(Sq / FWD_ROWS), H, B], [MLA_FWD_DEFINES.MLA_FWD_THREADS, 1, 1], MLA_FWD_DEFINES.MLA_FWD_SMEM, args);
  }

  /** Gradients of forward (overwritten), each shaped as its input; dkPe [B,Skv,1,64] is summed over heads. */
  backward(kernels: MlaTensorCoreKernels, grads: MlaGrads, dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor,
           v: Tensor, o: Tensor, lse: Tensor, opts: MlaBackwardOptions): void {
    const op = 'mlaAttentionBackward';
    const d = this.backwardInputs(op, grads, dout, qNope, qPe, kNope, kPe, v, o, lse, opts);
    if (!d) return;
    const { B, Sq, Skv, H } = d;
    expectTensor(op, 'dqNope', grads.dqNope, [B, Sq, H, D_NOPE], 'bf16', `[B,Sq,H,${D_NOPE}]`);
    expectTensor(op, 'dqPe', grads.dqPe, [B, Sq, H, D_ROPE], 'bf16', `[B,Sq,H,${D_ROPE}]`);
    const { MLA_BWD_THREADS, MLA_BWD_DQ_SMEM } = MLA_BWD_DEFINES;
    const deterministic = opts.deterministic === true;
    const rows = B * Sq * H;  // query rows
    this.withScratch((take) => {
      const dSum = take(rows * 4);
      const dqAccum = deterministic ? 0n : take(rows * D_QK * 4);
      const dkPeF32 = take((deterministic ? B * Skv * H : B * Skv) * D_ROPE * 4);
      // Fast mode: preprocess also zeroes dqAccum and the f32 dk_pe accumulator, B·Skv·64 floats.
      this.preprocess(d, o, dout, dSum, dqAccum, deterministic ? 0n : dkPeF32);
      // Both kernels skip dQ when dqAccum is null (deterministic mode: the dq pass below makes it).
      this.dkdv(kernels, d, grads, dout, qNope, qPe, kNope, kPe, v, lse, dSum, dkPeF32, opts,
        deterministic ? null : { address: dqAccum, rows: Sq });
      if (deterministic) {
        expectContiguousRows(op, d);
        const k = this.bwdFile.kernel('mla_attention_bwd_dq');
        k.allowDynamicShared(MLA_BWD_DQ_SMEM, op);
        k.launch([Math.ceil(Sq / TILE), H, B], [MLA_BWD_THREADS, 1, 1], MLA_BWD_DQ_SMEM,
          this.dqArgs.ptr(0, devicePtr(qNope)).ptr(1, devicePtr(qPe)).ptr(2, devicePtr(kNope)).ptr(3, devicePtr(kPe)).ptr(4, devicePtr(v))
            .ptr(5, devicePtr(dout)).ptr(6, devicePtr(lse)).ptr(7, dSum).ptr(8, devicePtr(grads.dqNope)).ptr(9, devicePtr(grads.dqPe))
            .i32(10, Sq).i32(11, Skv).i32(12, H).f32(13, opts.scale).i32(14, opts.causal ? 1 : 0));
      }
      this.finish(d, dqAccum, grads.dqNope, grads.dqPe, B * Sq, dkPeF32, grads.dkPe, B * Skv, opts.scale, deterministic);
    });
  }

  /**
   * One block of a longer backward (ring attention's steps; Hopper kernels, fast mode): adds the
   * block's dQ, unscaled (dS·K: dq = scale · the sum), into rows qFrom … qFrom+Sq−1 of dqAccum
   * f32 [B,L,H,192] (q_nope's 128 columns, then q_pe's 64), and overwrites the kv gradients
   * (dkPe summed over heads). Against a whole backward per block this leaves out what is per
   * query, not per block: zeroing an f32 dQ accumulator and turning it into bf16 dq (4 bytes
   * written, then 4 read and 2 written per element: ~55 µs for 4096 rows of 16 heads on an
   * H100), which is done once for all the blocks: `ends.overwrite` zeroes the accumulator in the
   * first block's preprocess (it covers every row), `ends.finish` rounds it in the last block's
   * finish kernel (Backend.mlaAttentionBackwardBlock).
   */
  backwardBlock(dqAccum: Tensor, qFrom: number, grads: MlaKvGrads, dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor,
                kPe: Tensor, v: Tensor, o: Tensor, lse: Tensor, opts: AttentionOptions, ends: MlaBlockEnds = {}, ring?: RingSlots): void {
    const op = 'mlaAttentionBackwardBlock';
    const d = this.backwardInputs(op, grads, dout, qNope, qPe, kNope, kPe, v, o, lse, opts, ring);
    if (!d) return;
    const { B, Sq, Skv, H } = d, n = slotsOf(d);
    const L = dqAccum.shape[1] ?? 0;
    expectTensor(op, 'dqAccum', dqAccum, [B, L, H, D_QK], 'f32', `[B,L,H,${D_QK}]`);
    checkBlockRows(qFrom, Sq, L, ends);
    const fin = ends.finish ?? null;
    if (fin) {
      expectTensor(op, 'finish.dqNope', fin.dqNope, [B, L, H, D_NOPE], 'bf16', `[B,L,H,${D_NOPE}]`);
      expectTensor(op, 'finish.dqPe', fin.dqPe, [B, L, H, D_ROPE], 'bf16', `[B,L,H,${D_ROPE}]`);
    }
    this.withScratch((take) => {
      const dSum = take(B * Sq * H * 4), dkPeF32 = take(n * B * Skv * D_ROPE * 4);
      // overwrite: the block covers all rows, so its preprocess zeroes the whole accumulator.
      this.preprocess(d, o, dout, dSum, ends.overwrite ? devicePtr(dqAccum) : 0n, dkPeF32);
      this.dkdv('hopper', d, grads, dout, qNope, qPe, kNope, kPe, v, lse, dSum, dkPeF32, opts,
        { address: devicePtr(dqAccum) + BigInt(qFrom * H * D_QK * 4), rows: L });
      // finish: all B·L positions of the accumulator, beside this block's dk_pe.
      this.finish(d, fin ? devicePtr(dqAccum) : 0n, fin?.dqNope ?? null, fin?.dqPe ?? null, fin ? B * L : 0, dkPeF32, grads.dkPe, n * B * Skv,
        opts.scale, false);
    });
  }

  /** Runs fn with `take(bytes)` handing out scratch device memory, all freed when fn returns (in stream order: the next user of a block is queued behind the kernels fn launched). */
  private withScratch(fn: (take: (bytes: number) => bigint) => void): void {
    const scratch: GpuBlock[] = [];
    try {
      fn((bytes) => { const b = this.allocator.alloc(bytes); scratch.push(b); return b.ptr; });
    } finally {
      for (const b of scratch) this.allocator.free(b);
    }
  }

  /** Checks what both backward entries take; null when there is nothing to compute. */
  private backwardInputs(op: string, grads: MlaKvGrads, dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor,
                         o: Tensor, lse: Tensor, opts: AttentionOptions, ring?: RingSlots): Dims | null {
    const d = inputDims(op, qNope, qPe, kNope, kPe, v, opts.causal, ring);
    const { B, Sq, Skv, H } = d, n = slotsOf(d);
    checkScale(op, opts);
    expectTensor(op, 'o', o, [B, Sq, H, D_V], 'bf16', `[B,Sq,H,${D_V}]`);
    expectTensor(op, 'dout', dout, [B, Sq, H, D_V], 'bf16', `[B,Sq,H,${D_V}]`);
    expectTensor(op, 'lse', lse, [B, H, Sq], 'f32', '[B,H,Sq]');
    const kvB = n === 1 ? 'B' : `${n}·B`;
    expectTensor(op, 'dkNope', grads.dkNope, [n * B, Skv, H, D_NOPE], 'bf16', `[${kvB},Skv,H,${D_NOPE}]`);
    expectTensor(op, 'dkPe', grads.dkPe, [n * B, Skv, 1, D_ROPE], 'bf16', `[${kvB},Skv,1,${D_ROPE}]`);
    expectTensor(op, 'dv', grads.dv, [n * B, Skv, H, D_V], 'bf16', `[${kvB},Skv,H,${D_V}]`);
    if (B * H === 0 || Sq + Skv === 0) return null;
    if (Sq === 0 || Skv === 0) throw new Error(`${op}: q ${Sq} × kv ${Skv} positions; skip the call for an empty block`);
    return d;
  }

  /** D = rowsum(dO∘O) over the block's query rows; zeroes dqAccum (its B·Sq·H rows) and dkPeF32 (slots·B·Skv·64 floats) where given. */
  private preprocess(d: Dims, o: Tensor, dout: Tensor, dSum: bigint, dqAccum: bigint, dkPeF32: bigint): void {
    const { MLA_BWD_PRE_THREADS: threads } = MLA_BWD_DEFINES;
    const rows = d.B * d.Sq * d.H;
    this.bwdFile.kernel('mla_attention_bwd_preprocess').launch([Math.ceil(rows / (threads / 32)), 1, 1], [threads, 1, 1], 0,
      this.preArgs.ptr(0, devicePtr(o)).ptr(1, devicePtr(dout)).ptr(2, dSum).ptr(3, dqAccum).ptr(4, dkPeF32)
        .i32(5, rows).i32(6, d.Sq).i32(7, d.H).i64(8, dkPeF32 === 0n ? 0n : BigInt(slotsOf(d) * d.B * d.Skv * D_ROPE)));
  }

  /**
   * dK, dV (and dk_pe's f32 parts into dkPeF32) of every key tile; dQ added into `dq`'s rows when
   * given: an f32 [B,·,H,192] accumulator of `rows` positions per batch whose address is the
   * block's first query row (so a block may add into part of a longer accumulator).
   */
  private dkdv(kernels: MlaTensorCoreKernels, d: Dims, grads: MlaKvGrads, dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor,
               kPe: Tensor, v: Tensor, lse: Tensor, dSum: bigint, dkPeF32: bigint, opts: MlaBackwardOptions,
               dq: { address: bigint; rows: number } | null): void {
    const op = 'mlaAttentionBackward';
    const { B, Sq, Skv, H } = d, n = slotsOf(d);
    const deterministic = dq === null;
    const [pQn, pQp, pKn, pKp, pV, pDo] = [qNope, qPe, kNope, kPe, v, dout].map(devicePtr) as [bigint, bigint, bigint, bigint, bigint, bigint];
    // Arguments 6-17, the same for the mma.sync kernel and the Hopper one.
    const dkdvTail = (args: KernelArgs): KernelArgs => args.ptr(6, devicePtr(lse)).ptr(7, dSum)
      .ptr(8, devicePtr(grads.dkNope)).ptr(9, devicePtr(grads.dv)).ptr(10, dq?.address ?? 0n).ptr(11, dkPeF32)
      .i32(12, Sq).i32(13, Skv).i32(14, H).f32(15, opts.scale).i32(16, opts.causal ? 1 : 0).i32(17, deterministic ? 1 : 0);
    if (kernels === 'hopper') {
      const { MLA_HOP_BWD_THREADS: threads, MLA_HOP_BWD_KEYS: keys, MLA_HOP_BWD_QUERIES: queries, MLA_HOP_BWD_DQ_ROWS: dqRows,
        MLA_HOP_BWD_SMEM: smem } = MLA_HOP_BWD_DEFINES;
      const k = this.bwdHopperFile.kernel('mla_attention_bwd_dkdv_hopper');
      k.allowDynamicShared(smem, op);
      // The Hopper kernel copies q, dO (`queries` per step) and k, v (its `keys`) with TMA.
      const maps = this.dkdvHopperMaps;
      maps.set(0, headRows(pQn, B, Sq, H, D_NOPE, queries, d.rs.qNope), `${op}: qNope`);
      maps.set(1, headRows(pQp, B, Sq, H, D_ROPE, queries), `${op}: qPe`);
      maps.set(2, headRows(pKn, n * B, Skv, H, D_NOPE, keys, d.rs.kNope), `${op}: kNope`);
      maps.set(3, sharedRows(pKp, n * B, Skv, D_ROPE, keys), `${op}: kPe`);
      maps.set(4, headRows(pV, n * B, Skv, H, D_V, keys, d.rs.v), `${op}: v`);
      maps.set(5, headRows(pDo, B, Sq, H, D_V, queries), `${op}: dout`);
      // dQ leaves as bulk reduce-adds into the accumulator: boxes of 64 columns × dqRows queries
      // (each warp of a consumer adds its own rows), seen as 5-D (32 columns, 6 blocks of 32, H,
      // Sq, B) so that a box is 128-byte lines, as the swizzle needs. The map spans the block's
      // Sq rows (rows past them are clipped) inside a batch stride of dq.rows positions.
      // Deterministic mode has no accumulator; the kernel then skips dQ and never reads this
      // slot, so it keeps whatever map it held.
      if (dq) {
        maps.set(18, { dtype: 'f32', address: dq.address, dims: [32, D_QK / 32, H, Sq, B],
          strides: [128, D_QK * 4, H * D_QK * 4, dq.rows * H * D_QK * 4],
          box: [32, 2, 1, dqRows, 1], swizzle128: true }, `${op}: dq accumulator`);
      }
      k.launch([H, ringKeyTiles(d, keys), B], [threads, 1, 1], smem, ringArgs(dkdvTail(this.dkdvHopperArgs), 19, d));
      return;
    }
    if (d.ring) throw new Error(`${op}: ring slots in one launch need the Hopper kernels; use one launch per ring step`);
    if (dq && dq.rows !== Sq) throw new Error('internal: the mma.sync backward adds dQ into an accumulator of its own rows only');
    expectContiguousRows(op, d);
    const { MLA_BWD_THREADS, MLA_BWD_DKDV_SMEM } = MLA_BWD_DEFINES;
    const k = this.bwdFile.kernel('mla_attention_bwd_dkdv');
    k.allowDynamicShared(MLA_BWD_DKDV_SMEM, op);
    const args = dkdvTail(this.dkdvArgs.ptr(0, pQn).ptr(1, pQp).ptr(2, pKn).ptr(3, pKp).ptr(4, pV).ptr(5, pDo));
    k.launch([Math.ceil(Skv / TILE), H, B], [MLA_BWD_THREADS, 1, 1], MLA_BWD_DKDV_SMEM, args);
  }

  /** f32 dQ → bf16 dq_nope/dq_pe over qPositions flat positions (B·Sq; 0 skips it), dk_pe summed over heads → bf16 over kPositions. */
  private finish(d: Dims, dqAccum: bigint, dqNope: Tensor | null, dqPe: Tensor | null, qPositions: number, dkPeF32: bigint,
                 dkPe: Tensor, kPositions: number, scale: number, deterministic: boolean): void {
    const { MLA_BWD_FINISH_THREADS: threads } = MLA_BWD_DEFINES;
    // One block per flat position of the longer of q (dQ) and kv (dk_pe).
    this.bwdFile.kernel('mla_attention_bwd_finish').launch([Math.max(qPositions, kPositions), 1, 1], [threads, 1, 1], 0,
      this.finishArgs.ptr(0, dqAccum).ptr(1, dqNope ? devicePtr(dqNope) : 0n).ptr(2, dqPe ? devicePtr(dqPe) : 0n).ptr(3, dkPeF32)
        .ptr(4, devicePtr(dkPe)).i32(5, d.H).f32(6, scale).i32(7, deterministic ? 1 : 0).i32(8, qPositions).i32(9, kPositions));
  }
}
