// Launcher of the grouped expert linear kernels (forward, backward data, backward weight), one
// launch each for all experts, with the experts' row counts read by the kernels from the device
// offsets (no host synchronisation). Four kernel sets, the same row tiles over the offsets and
// shape rules:
//   mma    kernels/grouped_gemm.cu, mma.sync m16n8k16 (sm_80 and later);
//   wgmma  kernels/grouped_gemm_wgmma.cu, Hopper warpgroup MMA (sm_90a only);
//   tma    kernels/grouped_gemm_tma.cu (sm_90a only; its machinery in grouped_gemm_tma.cuh, the
//          weight product in grouped_gemm_tma_dw.cuh): TMA copies from a producer warpgroup,
//          128 × 256 tiles, all three products, each a persistent kernel (at most one CTA per SM,
//          each walking its share of the output tiles with the copy ring running on from tile to
//          tile; forward and data over (row tile, column tile), the weight product over (expert,
//          row tile, column tile)); also the SwiGLU forward and the gate-and-up data product
//          (x's gradient through the experts' gate and up as one reduction over 2N).
//   tma_pair  the tma set with the forward, data, gate-and-up data and SwiGLU products in
//          clusters of two CTAs on neighbouring row tiles, which copy a weight tile they share
//          into both by TMA multicast (kernel header "CTA pairs": a third less L2 traffic); and
//          the weight product in clusters whose two tiles share the activations' boxes, the
//          gate's and the up's gradients as one launch (groupedLinearWeightGradPair; kernel
//          kernels/grouped_gemm_tma_dw.cuh, "Weight product in CTA pairs"). An earlier form of it (ce87017) measured 1.3–1.6× slower
//          than tma; the kernel header lists what was changed since and why. This one, on an H100
//          (2026-12-07 19:17 UTC, bench gemm --grouped): forward 0.543 / 0.579 ms against tma's
//          0.603 / 0.644, data 0.588 / 0.541 against 0.638 / 0.573, SwiGLU forward 1.216
//          against 1.635, gate-and-up data 1.053 against 1.207 (and 1.511 composed). Its weight
//          product (H100, 2026-12-08 00:33 UTC), beta 0: f32 0.650 / 0.671 ms against tma's
//          0.714 / 0.683; the gate-and-up pair in one launch 1.299 ms (f32) and 1.376 (bf16)
//          against tma's two launches 1.414 and 1.540: 8–11%, not the third a bound on L2 bytes
//          would give (grouped_gemm_tma_dw.cuh). With beta 1 it is slower than tma's (3.29 against 2.97 ms,
//          f32), but 'auto' sends beta 1 to wgmma's kernel anyway.
// Which one runs is the backend option groupedGemm; 'auto' is tma_pair on sm_90a (with wgmma's
// weight product where it accumulates, beta 1), else mma. Measured on an H100 (2026-12-07 02:58 UTC,
// bench gemm --grouped, the bench shapes: 64 experts, 49152 rows), ms per product:
//                              mma    wgmma   tma    one cuBLASLt call per expert
//   forward 2048 → 1408       1.190  0.753  0.561  0.964
//   data    2048 → 1408       1.125  0.847  0.634  0.825
//   forward 1408 → 2048       1.183  0.830  0.655  0.815
//   data    1408 → 2048       1.040  0.780  0.555  0.916
//   weight, beta 0, f32       1.008  0.803  0.695  0.866   ([1408, 2048] gradients; [2048, 1408]: 1.017 0.807 0.652 0.886)
//   weight, beta 1, f32       2.208  1.294  3.075  1.210
//   weight, beta 1, bf16      0.877  0.987  6.047  0.844
// The tma weight product accumulating into a gradient is 4.4× slower than its own beta 0 with f32
// gradients and 6× slower than wgmma's with bf16 ones (not yet understood: the L2 prefetch of the
// old gradient tile and the epilogue's loads are the suspects), so 'auto' sends beta 1 to wgmma. The bench step (one micro-batch: every expert gradient written
// once, beta 0) ran at 93,439 tokens/s with tma against 87,988 with wgmma (bench train --kernels).
//
// The experts' weights (and f32 gradients) reach the kernel as a device array of E base
// addresses. Why not one base and a stride: the weights are separate storages or views into FSDP
// flats where an expert's gate, up and down interleave with the other experts', so equal spacing
// is not guaranteed. The tables are cached by their contents (a whole parameter never moves, and
// gathered FSDP buffers mostly come back at the same addresses), so a training step uploads none
// after the first: a copy from pageable host memory may make the driver wait for the stream.
// The tma set reads each expert's weight through its own CUtensorMap instead of an address: the
// E maps (128 bytes each) are encoded on the host and uploaded as one device array, cached by
// the same contents (and the product, which sets the map's box) in the same table cache, so the
// E cuTensorMapEncodeTiled calls are paid on a cache miss only. Its weight product reads only
// the activations through maps (dY and X, kernel parameters) and writes the gradients through
// the address table wgmma's weight product uses.
//
// bf16 at widths that are multiples of 64 runs the kernels; anything else (f32 compute, odd
// widths) and the per_expert setting run one cuBLASLt product per expert after reading the
// offsets on the host (one synchronisation per call).
import type { Tensor } from '../../../tensor/tensor.js';
import type { CachingAllocator, GpuBlock } from '../runtime/allocator.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile, type CudaKernel } from '../runtime/module.js';
import { TensorMapArray, TensorMapSlots, type TiledMap } from '../runtime/tensor_map.js';
import { assertContiguous, assertSameDType } from './common.js';
import type { MatmulLauncher } from './matmul.js';
import type { SumSquaresMultiLauncher } from './sum_squares_multi.js';

/** Output tile of both kernel sets (rows × columns) and their block size. */
const BM = 128, BN = 128, THREADS = 256;
const MMA_BK = 32, MMA_STAGES = 4;
/** mma: STAGES × (A tile + B tile), each the larger of [128][32+8] and [32][128+8] bf16 (padded rows). */
const MMA_SMEM = MMA_STAGES * 2 * Math.max(BM * (MMA_BK + 8), MMA_BK * (BM + 8)) * 2;
const WGMMA_BK = 64, WGMMA_STAGES = 5;
/** wgmma: STAGES × (A + B) tiles of 128 × 64 bf16 (swizzled, unpadded), plus 1024 bytes to align the window. */
const WGMMA_SMEM = WGMMA_STAGES * 2 * BM * WGMMA_BK * 2 + 1024;
/**
 * wgmma weight product: two CTAs per SM of three stages each (2 × 97 KiB of the 227 KiB), so one
 * CTA's f32 read-modify-write epilogue (a write only, with beta 0) overlaps the other's main loop
 * (kernel header).
 */
const WGMMA_DW_STAGES = 3, WGMMA_DW_BLOCKS = 2;
const WGMMA_DW_SMEM = WGMMA_DW_STAGES * 2 * BM * WGMMA_BK * 2 + 1024;

/** tma: a 128 × 256 tile (two consumer warpgroups of 64 rows, one producer), four stages of A (128 × 64) and B (256 × 64). */
const TMA_BN = 256, TMA_THREADS = 384, TMA_STAGES = 4;
/** tma: STAGES × (A + B) tiles, a full and an empty mbarrier per stage, 1024 bytes to align the window. */
const TMA_SMEM = TMA_STAGES * (BM + TMA_BN) * WGMMA_BK * 2 + TMA_STAGES * 2 * 8 + 1024;

/** tma weight product's squares: one partial per consumer warp a tile. */
const SQUARES_PER_TILE = 8;

/** The -D defines kernels/grouped_gemm.cu is compiled with (it static_asserts GG_SMEM). */
export const GROUPED_GEMM_DEFINES = { GG_BM: BM, GG_BN: BN, GG_BK: MMA_BK, GG_STAGES: MMA_STAGES, GG_THREADS: THREADS, GG_SMEM: MMA_SMEM } as const;
/** The -D defines kernels/grouped_gemm_wgmma.cu is compiled with (it static_asserts GGW_SMEM). */
export const GROUPED_GEMM_WGMMA_DEFINES = {
  GGW_BM: BM, GGW_BN: BN, GGW_BK: WGMMA_BK, GGW_STAGES: WGMMA_STAGES, GGW_THREADS: THREADS, GGW_SMEM: WGMMA_SMEM,
  GGW_DW_STAGES: WGMMA_DW_STAGES, GGW_DW_BLOCKS: WGMMA_DW_BLOCKS, GGW_DW_SMEM: WGMMA_DW_SMEM,
} as const;
/** The -D defines kernels/grouped_gemm_tma.cu is compiled with (it static_asserts GGT_SMEM). */
export const GROUPED_GEMM_TMA_DEFINES = {
  GGT_BM: BM, GGT_BN: TMA_BN, GGT_BK: WGMMA_BK, GGT_STAGES: TMA_STAGES, GGT_THREADS: TMA_THREADS, GGT_SMEM: TMA_SMEM,
} as const;

/** per_expert: one cuBLASLt product per expert after reading the offsets (the path the kernels replace; A/B runs). */
export type GroupedGemmKernels = 'mma' | 'wgmma' | 'tma' | 'tma_pair' | 'per_expert';
export type GroupedGemmRequest = 'auto' | GroupedGemmKernels;

/** The kernels' shape rule: K and N multiples of 64 (whole 16-byte pieces, whole k16 steps, whole 64-column swizzle blocks). */
const WIDTH_MULTIPLE = 64;
/**
 * Tables kept uploaded: 12 per MoE layer (addresses of the gate, up and down weights and
 * gradients; under tma, the weights' forward and data map arrays), 27 layers, with room.
 */
const TABLE_CACHE = 512;
/** The grid's y dimension holds the worst-case row tiles. */
const MAX_GRID_Y = 65535;

type Product = 'forward' | 'data' | 'weight';

export class GroupedGemmLauncher {
  private readonly mmaFile: KernelFile;
  private readonly wgmmaFile: KernelFile;
  private readonly tmaFile: KernelFile;
  private readonly args = new KernelArgs(8);
  /** The weight product's: the forward's eight and beta. */
  private readonly dwArgs = new KernelArgs(9);
  /** tma forward / data: the A operand's map (by value), then as args (the weights' map array in place of the address table). */
  private readonly tmaArgs = new KernelArgs(8, [0]);
  private readonly tmaMaps: TensorMapSlots;
  /** tma SwiGLU forward: x's map (by value), the gate-then-up map array, G, U, H, offsets, E, M, N, K. */
  private readonly tmaSwigluArgs = new KernelArgs(10, [0]);
  private readonly tmaSwigluMaps: TensorMapSlots;
  /** tma gate-and-up data product: the maps over dY1 and dY2 (by value), the W1-then-W2 map array, dX, offsets, E, M, N, K. */
  private readonly tmaGateUpDxArgs = new KernelArgs(9, [0, 1]);
  private readonly tmaGateUpDxMaps: TensorMapSlots;
  /** tma weight product: the maps over dY and X (by value), the gradients' address table, offsets, E, M, N, K, beta, squares' partials. */
  private readonly tmaDwArgs = new KernelArgs(10, [0, 1]);
  private readonly tmaDwMaps: TensorMapSlots;
  /** tma_pair weight product: the maps over dY, dY2 and X (by value), then the single kernel's table..squares, and twin. */
  private readonly pairDwArgs = new KernelArgs(12, [0, 1, 2]);
  private readonly pairDwMaps: TensorMapSlots;
  private readonly weightMaps: TensorMapArray;
  private table = new BigUint64Array(0);
  /** Uploaded address tables and map arrays by contents, oldest first (bounded: TABLE_CACHE entries). */
  private readonly tables = new Map<string, GpuBlock>();
  /** The kernel set every bf16 call runs. */
  kernels: GroupedGemmKernels;
  /** tma set: the weight product with beta 1 runs wgmma's kernel ('auto'; use()). */
  private accumulateWithWgmma = false;
  /**
   * Whether the backend's gate-and-up data product runs the tma sets' one-reduction kernel
   * (groupedLinearBackwardDataPair; on by default) or composes two data products and an add
   * (bench train --gate_up_dx=false, to measure the difference; H100, bench gemm --grouped:
   * 1.053 ms in one launch against 1.393 composed under tma_pair).
   */
  gateUpData = true;
  /**
   * Whether tma_pair runs the weight products in CTA pairs, the gate's and the up's as one launch
   * (kernels/grouped_gemm_tma_dw.cuh, "Weight product in CTA pairs"; on by default), or tma's one-CTA kernel, a launch
   * a product (bench train --pair_dw=false, to measure the difference).
   */
  pairWeight = true;
  /**
   * tma_pair, by kernel name: the 2-CTA clusters the GPU runs at once (asked once per kernel) and
   * how many the kernel's last launch ran (benchmarks print both).
   */
  private readonly clusters = new Map<string, { resident: number; launched: number }>();

  /** partialSums: adds up the tma weight product's per-tile squares (sum_squares_multi.cu's final reduction). */
  constructor(private readonly ctx: CudaContext, private readonly allocator: CachingAllocator, private readonly gemm: MatmulLauncher,
              private readonly partialSums: SumSquaresMultiLauncher, request: GroupedGemmRequest = 'auto') {
    this.mmaFile = new KernelFile(ctx, 'grouped_gemm.cu', GROUPED_GEMM_DEFINES);
    this.wgmmaFile = new KernelFile(ctx, 'grouped_gemm_wgmma.cu', GROUPED_GEMM_WGMMA_DEFINES);
    this.tmaFile = new KernelFile(ctx, 'grouped_gemm_tma.cu', GROUPED_GEMM_TMA_DEFINES);
    this.tmaMaps = new TensorMapSlots(ctx.driver, this.tmaArgs);
    this.tmaSwigluMaps = new TensorMapSlots(ctx.driver, this.tmaSwigluArgs);
    this.tmaGateUpDxMaps = new TensorMapSlots(ctx.driver, this.tmaGateUpDxArgs);
    this.tmaDwMaps = new TensorMapSlots(ctx.driver, this.tmaDwArgs);
    this.pairDwMaps = new TensorMapSlots(ctx.driver, this.pairDwArgs);
    this.weightMaps = new TensorMapArray(ctx.driver);
    this.kernels = 'mma';
    this.use(request);
  }

  /**
   * Chooses the kernel set ('auto': tma_pair on sm_90a, else mma); wgmma, tma or tma_pair off sm_90a is an error.
   * Under 'auto' the weight product that accumulates into a gradient (beta 1: the second and later
   * micro-batches) runs wgmma's kernel, which measured faster there (header).
   */
  use(request: GroupedGemmRequest): void {
    const hopper = this.ctx.arch === 'sm_90a';
    if ((request === 'wgmma' || request === 'tma' || request === 'tma_pair') && !hopper) {
      throw new Error(`the ${request} grouped GEMM kernels need an sm_90a GPU (H100/H200); ${this.ctx.name} is ${this.ctx.arch}: use groupedGemm 'mma' or 'auto'`);
    }
    this.kernels = request === 'auto' ? (hopper ? 'tma_pair' : 'mma') : request;
    this.accumulateWithWgmma = request === 'auto';
  }

  /** The tma set or its variant in CTA pairs (they differ in the forward, data and SwiGLU kernels only). */
  private get tma(): boolean { return this.kernels === 'tma' || this.kernels === 'tma_pair'; }

  /** tma_pair: per pair kernel launched so far, the 2-CTA clusters resident at once and those its last launch ran. */
  get pairClusters(): ReadonlyMap<string, { resident: number; launched: number }> { return this.clusters; }

  /**
   * The kernel of one product in the chosen set (bf16Grads: the wgmma weight product into bf16
   * gradients), allowed its shared memory. The tma set's own kernels are launched by launchTma
   * and launchTmaWeight; it runs wgmma's only where a width is 0.
   */
  private kernel(product: 'fwd' | 'dx' | 'dw', bf16Grads = false) {
    const wgmma = this.kernels === 'wgmma' || this.tma;
    const k = wgmma ? this.wgmmaFile.kernel(`grouped_wgmma_${product}_bf16${bf16Grads ? '_gbf16' : ''}`) : this.mmaFile.kernel(`grouped_${product}_bf16`);
    const smem = !wgmma ? MMA_SMEM : product === 'dw' ? WGMMA_DW_SMEM : WGMMA_SMEM;
    k.allowDynamicShared(smem, `grouped GEMM (${this.kernels})`);
    return { k, smem };
  }

  groupedLinear(out: Tensor, x: Tensor, weights: readonly Tensor[], offsets: Tensor): void {
    const { M, N, K } = this.check('groupedLinear', x, out, weights, offsets);
    if (!this.kernelsTake(x, out, weights, K, N)) { this.perExpert('forward', out, x, weights, offsets); return; }
    if (this.tma && K > 0 && N > 0) { this.launchTma('fwd', out, x, weights, offsets, M, N, K); return; }
    this.launch('fwd', [Math.ceil(N / BN), this.rowTiles(M, weights.length), 1], out, x, weights, offsets, M, N, K);
  }

  /**
   * The tma set's gate and up products with their SwiGLU in one launch (kernel header: "SwiGLU"):
   * g, u [M, N] = x·Wg_eᵀ, x·Wu_eᵀ and h = silu(g)·u, the bits of two groupedLinear calls and the
   * SwiGLU kernel. The weights' map array holds the E gate maps, then the E up maps; the grid is
   * at most one CTA per SM over ceil(N/128)·(ceil(M/128) + E) tiles of 128 output columns (256
   * accumulator columns: gate and up); tma_pair runs it in CTA pairs over pairs of those tiles.
   * Returns false where the tma set does not take the shapes
   * (another set chosen, unaligned tensors, widths not multiples of 64): the caller composes them.
   */
  groupedSwiGLU(h: Tensor, g: Tensor, u: Tensor, x: Tensor, gates: readonly Tensor[], ups: readonly Tensor[], offsets: Tensor): boolean {
    const { M, N, K } = this.check('groupedSwiGLU gate', x, g, gates, offsets);
    this.check('groupedSwiGLU up', x, u, ups, offsets);
    this.check('groupedSwiGLU out', x, h, ups, offsets);
    if (!this.tma || K === 0 || N === 0 || !this.kernelsTake(x, g, [...gates, ...ups, u, h], K, N)) return false;
    if (M === 0) return true;
    const what = `grouped GEMM (${this.kernels}) SwiGLU forward`;
    this.tmaSwigluMaps.set(0, { dtype: 'bf16', address: devicePtr(x), dims: [K, M], strides: [K * 2], box: [WGMMA_BK, BM], swizzle128: true },
      `${what}: rows [${M}, ${K}]`);
    const E = gates.length;
    const args = this.tmaSwigluArgs.ptr(1, this.weightMapsOf('fwd', [...gates, ...ups], N, K, what)).ptr(2, devicePtr(g)).ptr(3, devicePtr(u))
      .ptr(4, devicePtr(h)).ptr(5, devicePtr(offsets)).i32(6, E).i32(7, M).i32(8, N).i32(9, K);
    this.launchPersistent('fwd_swiglu', Math.ceil(N / 128), Math.ceil(M / BM) + E, args, what);
    return true;
  }

  /**
   * The tma set's gate-and-up data product (kernel header "Gate-and-up data product"): dx [M, K] =
   * dy1_e·W1_e + dy2_e·W2_e per row block as one reduction over 2N, written and rounded once (the
   * backend's composed form rounds both products and their sum: backend/grouped_data_pair.ts).
   * The maps over dy1 and dy2 are kernel parameters; the weights' map array holds the E W1 maps,
   * then the E W2 maps, with the data product's boxes; the grid is the data product's, and
   * tma_pair runs it in CTA pairs. Returns false where the tma set does not take the shapes
   * (another set chosen, unaligned tensors, widths not multiples of 64): the caller composes it.
   */
  groupedLinearBackwardDataPair(dx: Tensor, dy1: Tensor, dy2: Tensor, w1: readonly Tensor[], w2: readonly Tensor[], offsets: Tensor): boolean {
    const { M, N, K } = this.check('groupedLinearBackwardDataPair first', dx, dy1, w1, offsets);
    this.check('groupedLinearBackwardDataPair second', dx, dy2, w2, offsets);
    if (!this.tma || K === 0 || N === 0 || !this.kernelsTake(dy1, dx, [...w1, ...w2, dy2], K, N)) return false;
    if (M === 0) return true;
    const what = `grouped GEMM (${this.kernels}) gate-and-up data`;
    [dy1, dy2].forEach((dy, i) => this.tmaGateUpDxMaps.set(i,
      { dtype: 'bf16', address: devicePtr(dy), dims: [N, M], strides: [N * 2], box: [WGMMA_BK, BM], swizzle128: true }, `${what}: dY${i + 1} [${M}, ${N}]`));
    const E = w1.length;
    const args = this.tmaGateUpDxArgs.ptr(2, this.weightMapsOf('dx', [...w1, ...w2], N, K, what)).ptr(3, devicePtr(dx)).ptr(4, devicePtr(offsets))
      .i32(5, E).i32(6, M).i32(7, N).i32(8, K);
    this.launchPersistent('dx_gate_up', Math.ceil(K / TMA_BN), Math.ceil(M / BM) + E, args, what);
    return true;
  }

  groupedLinearBackwardData(dx: Tensor, dy: Tensor, weights: readonly Tensor[], offsets: Tensor): void {
    const { M, N, K } = this.check('groupedLinearBackwardData', dx, dy, weights, offsets);
    if (!this.kernelsTake(dy, dx, weights, K, N)) { this.perExpert('data', dx, dy, weights, offsets); return; }
    if (this.tma && K > 0 && N > 0) { this.launchTma('dx', dx, dy, weights, offsets, M, N, K); return; }
    this.launch('dx', [Math.ceil(K / BN), this.rowTiles(M, weights.length), 1], dx, dy, weights, offsets, M, N, K);
  }

  /**
   * dW_e = dY_eᵀ·X_e + beta·dW_e. beta 0 (a step's first write, autograd/lazy_grad_zero.ts) writes
   * without reading, half the gradient traffic, and gives an expert with no rows zeros. With
   * squares (f32 [1]), the tma weight product with beta 0 also sets squares[0] to the Σ of the
   * squares of every value it wrote (autograd/grad_squares.ts) and returns true; every other path
   * leaves squares alone and returns false (summing there would cost what the caller's own pass
   * costs).
   */
  groupedLinearWeightGrad(dweights: readonly Tensor[], dy: Tensor, x: Tensor, offsets: Tensor, beta: 0 | 1, squares?: Tensor): boolean {
    const { M, N, K } = this.check('groupedLinearWeightGrad', x, dy, dweights, offsets);
    // Every set writes f32 gradients; the wgmma and tma sets also bf16 ones (the lean recipe with
    // one micro-batch). Otherwise (bf16 gradients on the mma set, mixed
    // types) the product goes per expert through cuBLASLt, which reads the counts on the host (one
    // wait per product).
    const f32 = dweights.every((g) => g.dtype === 'f32'), bf16 = dweights.every((g) => g.dtype === 'bf16');
    const typed = f32 || (bf16 && (this.kernels === 'wgmma' || this.tma));
    if (M === 0) {
      // No rows at all: nothing to add, or (beta 0) each gradient is a product over no rows, which
      // the matmul launcher writes as zeros.
      if (beta === 0) for (const w of dweights) this.gemm.matmul(w, dy, x, { transA: true, beta: 0 });
      return false;
    }
    if (!typed || !this.kernelsTake(x, dy, dweights, K, N)) { this.perExpert('weight', dy, x, dweights, offsets, beta); return false; }
    const E = dweights.length;
    if (this.tmaWeight(beta) && K > 0 && N > 0) {
      return this.launchTmaWeight([dweights], [dy], x, offsets, M, N, K, beta, !f32, beta === 0 ? squares : undefined);
    }
    const table = this.tableOf(dweights);
    const args = this.dwArgs.ptr(0, table).ptr(1, devicePtr(dy)).ptr(2, devicePtr(x)).ptr(3, devicePtr(offsets))
      .i32(4, E).i32(5, M).i32(6, N).i32(7, K).i32(8, beta);
    const { k, smem } = this.kernel('dw', !f32);
    k.launch([Math.ceil(K / BN), Math.ceil(N / BM), E], [THREADS, 1, 1], smem, args);
    return false;
  }

  /**
   * Two weight products over the same rows, dW1_e = dY1_eᵀ·X_e + beta·dW1_e and dW2_e likewise
   * (the experts' gate and up: Backend.groupedLinearWeightGradPair), in one launch where the
   * tma_pair set runs them (kernels/grouped_gemm_tma_dw.cuh, "Weight product in CTA pairs": a pair is the same tile of
   * both, so every pair shares its X boxes). Returns null where it declines (another set, beta 1
   * under 'auto', mixed or other gradient types, shapes the kernels do not take; the caller runs
   * the two products), else whether it set squares (beta 0 with squares: Σ over both products).
   */
  groupedLinearWeightGradPair(dw1: readonly Tensor[], dw2: readonly Tensor[], dy1: Tensor, dy2: Tensor, x: Tensor, offsets: Tensor,
                              beta: 0 | 1, squares?: Tensor): boolean | null {
    const { M, N, K } = this.check('groupedLinearWeightGradPair first', x, dy1, dw1, offsets);
    this.check('groupedLinearWeightGradPair second', x, dy2, dw2, offsets);
    const all = [...dw1, ...dw2];
    const f32 = all.every((g) => g.dtype === 'f32'), bf16 = all.every((g) => g.dtype === 'bf16');
    if (!this.pairsWeights || !this.tmaWeight(beta) || M === 0 || K === 0 || N === 0 || dw1.length !== dw2.length) return null;
    if (!(f32 || bf16) || !this.kernelsTake(x, dy1, [...all, dy2], K, N)) return null;
    return this.launchTmaWeight([dw1, dw2], [dy1, dy2], x, offsets, M, N, K, beta, bf16, beta === 0 ? squares : undefined);
  }

  /** Whether the weight products run in CTA pairs (tma_pair with pairWeight). */
  private get pairsWeights(): boolean { return this.kernels === 'tma_pair' && this.pairWeight; }

  /** Whether the weight product with this beta runs the tma set's kernel (beta 1 goes to wgmma's under 'auto': header). */
  private tmaWeight(beta: 0 | 1): boolean { return this.tma && !(beta === 1 && this.accumulateWithWgmma); }

  /**
   * Shapes of one product: rows [M, K] (x or dx), cols [M, N] (out or dy), mats E × [N, K].
   * Returns M, N, K after checking what the kernels assume.
   */
  private check(what: string, rows: Tensor, cols: Tensor, mats: readonly Tensor[], offsets: Tensor): { M: number; N: number; K: number } {
    if (rows.rank !== 2 || cols.rank !== 2) throw new Error(`internal: ${what} wants rank-2 row blocks, got [${rows.shape}] and [${cols.shape}]`);
    const M = rows.shape[0]!, K = rows.shape[1]!, N = cols.shape[1]!;
    if (cols.shape[0] !== M) throw new Error(`internal: ${what} row counts differ: [${rows.shape}] and [${cols.shape}]`);
    if (mats.length === 0) throw new Error(`internal: ${what} over no experts`);
    if (offsets.dtype !== 'i32' || offsets.size !== mats.length + 1) throw new Error(`internal: ${what} offsets ${offsets} for ${mats.length} experts (i32 [E+1])`);
    assertContiguous(offsets, `${what} offsets`);
    for (const [t, name] of [[rows, 'rows'], [cols, 'cols']] as const) assertContiguous(t, `${what} ${name}`);
    assertSameDType(rows, cols, `${what} row blocks`);
    if (rows.dtype === 'i32') throw new Error(`internal: ${what} on i32 tensors`);
    mats.forEach((w, e) => {
      assertContiguous(w, `${what} expert ${e} matrix`);
      if (w.rank !== 2 || w.shape[0] !== N || w.shape[1] !== K) throw new Error(`internal: ${what} expert ${e} matrix [${w.shape}], expected [${N}, ${K}]`);
    });
    return { M, N, K };
  }

  /**
   * Whether the kernels take this product: bf16, K and N multiples of 64, every address 16-byte
   * aligned (cp.async copies 16-byte pieces), and a kernel set chosen. Otherwise the product runs
   * per expert (f32 runs, odd widths of small test models, per_expert runs).
   */
  private kernelsTake(a: Tensor, b: Tensor, mats: readonly Tensor[], K: number, N: number): boolean {
    if (this.kernels === 'per_expert' || a.dtype !== 'bf16') return false;
    if (K % WIDTH_MULTIPLE !== 0 || N % WIDTH_MULTIPLE !== 0) return false;
    return [a, b, ...mats].every((t) => devicePtr(t) % 16n === 0n);
  }

  private rowTiles(M: number, E: number): number {
    const tiles = Math.ceil(M / BM) + E;
    if (tiles > MAX_GRID_Y) throw new Error(`internal: grouped GEMM over ${M} rows and ${E} experts needs ${tiles} row tiles (at most ${MAX_GRID_Y})`);
    return tiles;
  }

  private launch(product: 'fwd' | 'dx', grid: [number, number, number], out: Tensor, a: Tensor, weights: readonly Tensor[], offsets: Tensor,
                 M: number, N: number, K: number): void {
    if (M === 0) return;
    const table = this.tableOf(weights);
    const args = this.args.ptr(0, devicePtr(out)).ptr(1, devicePtr(a)).ptr(2, table).ptr(3, devicePtr(offsets))
      .i32(4, weights.length).i32(5, M).i32(6, N).i32(7, K);
    const { k, smem } = this.kernel(product);
    k.launch(grid, [THREADS, 1, 1], smem, args);
  }

  /**
   * The tma set's forward (out [M,N] = a [M,K] · W_eᵀ) or data (out [M,K] = a [M,N] · W_e)
   * product: the A map over a's rows (box 64 × 128 rows), the weights' map array, and output
   * width / reduction in the places of N / K as the kernel reads them. K, N > 0 (a map has no
   * empty dimension; the caller runs wgmma's kernel then). A persistent grid of at most one CTA
   * per SM over the ceil(width/256) · (ceil(M/128) + E) tiles (column tiles × row-tile slots,
   * the slots past the last row tile empty): one CTA per tile would expose each tile's ring fill
   * (kernel header). The kernel walks the tiles in one dimension, so the slot count has no grid
   * y limit here.
   */
  private launchTma(product: 'fwd' | 'dx', out: Tensor, a: Tensor, weights: readonly Tensor[], offsets: Tensor,
                    M: number, N: number, K: number): void {
    if (M === 0) return;
    const red = product === 'fwd' ? K : N, width = product === 'fwd' ? N : K;
    const what = `grouped GEMM (${this.kernels}) ${product === 'fwd' ? 'forward' : 'data'}`;
    this.tmaMaps.set(0, { dtype: 'bf16', address: devicePtr(a), dims: [red, M], strides: [red * 2], box: [WGMMA_BK, BM], swizzle128: true },
      `${what}: rows [${M}, ${red}]`);
    const args = this.tmaArgs.ptr(1, this.weightMapsOf(product, weights, N, K, what)).ptr(2, devicePtr(out)).ptr(3, devicePtr(offsets))
      .i32(4, weights.length).i32(5, M).i32(6, N).i32(7, K);
    this.launchPersistent(product, Math.ceil(width / TMA_BN), Math.ceil(M / BM) + weights.length, args, what);
  }

  /**
   * One of the tma set's persistent forward-type kernels (grouped_tma_<name>_bf16) over `columns`
   * column tiles × `slots` row-tile slots: at most one CTA per SM; or under tma_pair
   * (grouped_tma_pair_<name>_bf16, kernel header "CTA pairs") clusters of two CTAs over the
   * columns · ceil(slots / 2) pair tiles, at most as many clusters as the GPU runs at once.
   */
  private launchPersistent(name: 'fwd' | 'dx' | 'fwd_swiglu' | 'dx_gate_up', columns: number, slots: number, args: KernelArgs, what: string): void {
    const pair = this.kernels === 'tma_pair';
    const k = this.tmaFile.kernel(`grouped_tma_${pair ? 'pair_' : ''}${name}_bf16`);
    k.allowDynamicShared(TMA_SMEM, what);
    if (!pair) {
      k.launch([Math.min(columns * slots, this.ctx.smCount), 1, 1], [TMA_THREADS, 1, 1], TMA_SMEM, args);
      return;
    }
    const counts = this.clusterCounts(k, what);
    counts.launched = Math.min(columns * Math.ceil(slots / 2), counts.resident);
    k.launch([2 * counts.launched, 1, 1], [TMA_THREADS, 1, 1], TMA_SMEM, args);
  }

  /** The cluster counts of pair kernel k, asking the driver how many run at once on first use. */
  private clusterCounts(k: CudaKernel, what: string): { resident: number; launched: number } {
    let counts = this.clusters.get(k.name);
    if (counts === undefined) {
      const resident = this.ctx.driver.maxActiveClusters(k.handle, 2 * Math.floor(this.ctx.smCount / 2), TMA_THREADS, TMA_SMEM, what);
      if (resident < 1) throw new Error(`${what}: ${this.ctx.name} can run no cluster of two ${TMA_SMEM}-byte CTAs; use groupedGemm 'tma'`);
      counts = { resident, launched: 0 };
      this.clusters.set(k.name, counts);
    }
    return counts;
  }

  /**
   * The tma set's weight product dW_e = dY_eᵀ·X_e + beta·dW_e, or under tma_pair two of them over
   * the same X (dweights and dys of length 2, each product's E gradients and its dY): maps over
   * the whole dY [M, N] (each) and X [M, K] with boxes of 64 columns × 64 rows (the MN-major
   * column blocks of grouped_gemm_tma_dw.cuh), the gradients' address table (the first product's E
   * addresses, then the second's). tma: a persistent grid of at most one CTA per SM over the
   * E·ceil(N/128)·ceil(K/256) output tiles. tma_pair (kernels/grouped_gemm_tma_dw.cuh, "Weight product in CTA pairs"):
   * clusters of two over E·ceil(K/256) times ceil(ceil(N/128) / 2) pairs of row tiles (one
   * product) or ceil(N/128) (two: the same tile of each), at most as many clusters as the GPU
   * runs at once. With squares (beta 0), the kernel leaves 8 partial sums of squares a tile in a
   * scratch block and sum_squares_multi's final reduction adds them into squares[0]; returns
   * whether it did.
   */
  private launchTmaWeight(dweights: readonly (readonly Tensor[])[], dys: readonly Tensor[], x: Tensor, offsets: Tensor, M: number, N: number,
                          K: number, beta: 0 | 1, bf16Grads: boolean, squares?: Tensor): boolean {
    const pair = this.pairsWeights, twin = dys.length === 2;
    if (twin && !pair) throw new Error('internal: two weight products in one launch need the tma_pair set');
    const what = `grouped GEMM (${this.kernels}) weight${twin ? ' pair' : ''}`;
    const box = [64, WGMMA_BK];
    const maps = pair ? this.pairDwMaps : this.tmaDwMaps, args = pair ? this.pairDwArgs : this.tmaDwArgs;
    const dyMap = (dy: Tensor): TiledMap => ({ dtype: 'bf16', address: devicePtr(dy), dims: [N, M], strides: [N * 2], box, swizzle128: true });
    maps.set(0, dyMap(dys[0]!), `${what}: dY [${M}, ${N}]`);
    if (pair) maps.set(1, dyMap(dys[dys.length - 1]!), `${what}: dY2 [${M}, ${N}]`);
    maps.set(pair ? 2 : 1, { dtype: 'bf16', address: devicePtr(x), dims: [K, M], strides: [K * 2], box, swizzle128: true }, `${what}: X [${M}, ${K}]`);
    const E = dweights[0]!.length, tn = Math.ceil(N / BM), tk = Math.ceil(K / TMA_BN);
    // Tiles with a squares slot: every tile of a pair, its phantom (a row tile past N) included.
    const pairTiles = E * tk * (twin ? tn : Math.ceil(tn / 2)), tiles = pair ? 2 * pairTiles : E * tn * tk;
    if (squares && (squares.dtype !== 'f32' || squares.size !== 1)) throw new Error(`internal: ${what}: squares is ${squares}, expected f32 [1]`);
    // Stream-ordered allocator: the block freed below is reused only by later work on the stream.
    const partials = squares ? this.allocator.alloc(tiles * SQUARES_PER_TILE * 4) : null;
    const a = pair ? 3 : 2;
    args.ptr(a, this.tableOf(dweights.flat())).ptr(a + 1, devicePtr(offsets))
      .i32(a + 2, E).i32(a + 3, M).i32(a + 4, N).i32(a + 5, K).i32(a + 6, beta).ptr(a + 7, partials?.ptr ?? 0n);
    if (pair) args.i32(a + 8, twin ? 1 : 0);
    const k = this.tmaFile.kernel(`grouped_tma_${pair ? 'pair_' : ''}dw_bf16${bf16Grads ? '_gbf16' : ''}`);
    k.allowDynamicShared(TMA_SMEM, what);
    if (pair) {
      const counts = this.clusterCounts(k, what);
      counts.launched = Math.min(pairTiles, counts.resident);
      k.launch([2 * counts.launched, 1, 1], [TMA_THREADS, 1, 1], TMA_SMEM, args);
    } else {
      k.launch([Math.min(tiles, this.ctx.smCount), 1, 1], [TMA_THREADS, 1, 1], TMA_SMEM, args);
    }
    if (!squares || !partials) return false;
    this.partialSums.sumPartials(squares, partials.ptr, tiles * SQUARES_PER_TILE);
    this.allocator.free(partials);
    return true;
  }

  /**
   * The device array of the experts' weight maps (each W_e [N, K]: dims (K, N); forward boxes of
   * 64 k × 128 weight rows, data boxes of 64 output columns × 64 reduction rows; grouped_gemm_tma.cuh, operands),
   * encoded and uploaded on first use of these weights for this product.
   */
  private weightMapsOf(product: 'fwd' | 'dx', weights: readonly Tensor[], N: number, K: number, what: string): bigint {
    const box = product === 'fwd' ? [WGMMA_BK, 128] : [64, WGMMA_BK];
    return this.cached(`${product}|${N}|${K}|${weights.map(devicePtr).join(',')}`, () => {
      weights.forEach((w, e) => {
        const map: TiledMap = { dtype: 'bf16', address: devicePtr(w), dims: [K, N], strides: [K * 2], box, swizzle128: true };
        this.weightMaps.set(e, map, `${what}: expert ${e} weight [${N}, ${K}]`);
      });
      return this.weightMaps.bytes(weights.length);
    });
  }

  /** The device address of a table holding the experts' base addresses (u64 × E), uploaded on first use. */
  private tableOf(mats: readonly Tensor[]): bigint {
    if (this.table.length < mats.length) this.table = new BigUint64Array(mats.length);
    mats.forEach((w, e) => { this.table[e] = devicePtr(w); });
    const contents = this.table.subarray(0, mats.length);
    return this.cached(contents.join(','), () => contents);
  }

  /** The device copy of the bytes `make` returns (called on a miss only), kept by `key`. */
  private cached(key: string, make: () => ArrayBufferView): bigint {
    const hit = this.tables.get(key);
    if (hit) {
      this.tables.delete(key);
      this.tables.set(key, hit);  // most recently used last
      return hit.ptr;
    }
    if (this.tables.size >= TABLE_CACHE) {
      // Stream-ordered allocator: a later allocation of the freed block is used only by later work.
      const [oldest, block] = this.tables.entries().next().value as [string, GpuBlock];
      this.tables.delete(oldest);
      this.allocator.free(block);
    }
    const bytes = make();
    const block = this.allocator.alloc(bytes.byteLength);
    this.ctx.upload(block.ptr, bytes, bytes.byteLength);
    this.tables.set(key, block);
    return block.ptr;
  }

  /**
   * f32: one cuBLASLt product per expert with the options ops/linear.ts uses (offsets read on the
   * host). The weight product's beta 0 runs an expert with no rows too: a product over no rows,
   * which the matmul launcher writes as zeros.
   */
  private perExpert(product: Product, a: Tensor, b: Tensor, mats: readonly Tensor[], offsets: Tensor, beta: 0 | 1 = 1): void {
    const off = new Int32Array(offsets.size);
    this.ctx.download(off, devicePtr(offsets), 4 * offsets.size);
    const rows = (t: Tensor, s: number, en: number) => t.view([en - s, t.shape[1]!], [t.shape[1]!, 1], t.offset + s * t.shape[1]!);
    mats.forEach((w, e) => {
      const s = off[e]! - off[0]!, en = off[e + 1]! - off[0]!;
      if (en === s && (product !== 'weight' || beta === 1)) return;
      const av = rows(a, s, en), bv = rows(b, s, en);
      if (product === 'forward') this.gemm.matmul(av, bv, w, { transB: true });
      else if (product === 'data') this.gemm.matmul(av, bv, w, {});
      else this.gemm.matmul(w, av, bv, { transA: true, beta });
      av.dispose(); bv.dispose();
    });
  }
}
