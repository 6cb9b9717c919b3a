// Launcher of the grouped expert linear kernels (forward, backward data, backward weight), one
// launch each for all experts, with the experts' row counts read by the kernels from the device
// offsets (no host synchronisation). Two kernel sets, the same grids and shape rules:
//   mma    kernels/grouped_gemm.cu, mma.sync m16n8k16 (sm_80 and later);
//   wgmma  kernels/grouped_gemm_wgmma.cu, Hopper warpgroup MMA (sm_90a only).
// Which one runs is the backend option groupedGemm; 'auto' is wgmma on sm_90a, else mma. On an
// H100 (2026-12-06, bench gemm --grouped, the six products of one MoE layer at the bench shapes)
// test/cuda_grouped_gemm.test.ts passed for both and wgmma took 5.91 ms against mma's 9.20 and
// one cuBLASLt call per expert's 6.35 (18:17 UTC; the weight product, two CTAs per SM since then,
// 1.31 ms = 216 TFLOP/s, was 1.82 with one; into bf16 gradients 1.00 ms).
//
// The experts' weights (and f32 gradients) reach the kernel as a device array of E base
// addresses. Why not one base and a stride: the weights are separate storages or views into FSDP
// flats where an expert's gate, up and down interleave with the other experts', so equal spacing
// is not guaranteed. The tables are cached by their contents (a whole parameter never moves, and
// gathered FSDP buffers mostly come back at the same addresses), so a training step uploads none
// after the first: a copy from pageable host memory may make the driver wait for the stream.
//
// bf16 at widths that are multiples of 64 runs the kernels; anything else (f32 compute, odd
// widths) and the per_expert setting run one cuBLASLt product per expert after reading the
// offsets on the host (one synchronisation per call).
import type { Tensor } from '../../../tensor/tensor.js';
import type { CachingAllocator, GpuBlock } from '../runtime/allocator.js';
import type { CudaContext } from '../runtime/context.js';
import { devicePtr } from '../runtime/device_buffer.js';
import { KernelArgs } from '../runtime/kernel_args.js';
import { KernelFile } from '../runtime/module.js';
import { assertContiguous, assertSameDType } from './common.js';
import type { MatmulLauncher } from './matmul.js';

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
 * CTA's f32 read-modify-write epilogue overlaps the other's main loop (kernel header).
 */
const WGMMA_DW_STAGES = 3, WGMMA_DW_BLOCKS = 2;
const WGMMA_DW_SMEM = WGMMA_DW_STAGES * 2 * BM * WGMMA_BK * 2 + 1024;

/** The -D defines kernels/grouped_gemm.cu is compiled with (it static_asserts GG_SMEM). */
export const GROUPED_GEMM_DEFINES = { GG_BM: BM, GG_BN: BN, GG_BK: MMA_BK, GG_STAGES: MMA_STAGES, GG_THREADS: THREADS, GG_SMEM: MMA_SMEM } as const;
/** The -D defines kernels/grouped_gemm_wgmma.cu is compiled with (it static_asserts GGW_SMEM). */
export const GROUPED_GEMM_WGMMA_DEFINES = {
  GGW_BM: BM, GGW_BN: BN, GGW_BK: WGMMA_BK, GGW_STAGES: WGMMA_STAGES, GGW_THREADS: THREADS, GGW_SMEM: WGMMA_SMEM,
  GGW_DW_STAGES: WGMMA_DW_STAGES, GGW_DW_BLOCKS: WGMMA_DW_BLOCKS, GGW_DW_SMEM: WGMMA_DW_SMEM,
} as const;

/** per_expert: one cuBLASLt product per expert after reading the offsets (the path the kernels replace; A/B runs). */
export type GroupedGemmKernels = 'mma' | 'wgmma' | 'per_expert';
/** Whether 'auto' picks wgmma on sm_90a (see the header). */
const AUTO_WGMMA = true;
export type GroupedGemmRequest = 'auto' | GroupedGemmKernels;

/** The kernels' shape rule: K and N multiples of 64 (whole 16-byte pieces, whole k16 steps, whole 64-column swizzle blocks). */
const WIDTH_MULTIPLE = 64;
/** Address tables kept uploaded: 6 per MoE layer (gate, up, down weights and gradients), 27 layers, with room. */
const TABLE_CACHE = 256;
/** The grid's y dimension holds the worst-case row tiles. */
const MAX_GRID_Y = 65535;

type Product = 'forward' | 'data' | 'weight';

export class GroupedGemmLauncher {
  private readonly mmaFile: KernelFile;
  private readonly wgmmaFile: KernelFile;
  private readonly args = new KernelArgs(8);
  private table = new BigUint64Array(0);
  /** Uploaded address tables by contents, oldest first (bounded: TABLE_CACHE entries). */
  private readonly tables = new Map<string, GpuBlock>();
  /** The kernel set every bf16 call runs. */
  kernels: GroupedGemmKernels;

  constructor(private readonly ctx: CudaContext, private readonly allocator: CachingAllocator, private readonly gemm: MatmulLauncher,
              request: GroupedGemmRequest = 'auto') {
    this.mmaFile = new KernelFile(ctx, 'grouped_gemm.cu', GROUPED_GEMM_DEFINES);
    this.wgmmaFile = new KernelFile(ctx, 'grouped_gemm_wgmma.cu', GROUPED_GEMM_WGMMA_DEFINES);
    this.kernels = 'mma';
    this.use(request);
  }

  /** Chooses the kernel set ('auto': mma, or wgmma on sm_90a with AUTO_WGMMA); wgmma off sm_90a is an error. */
  use(request: GroupedGemmRequest): void {
    const hopper = this.ctx.arch === 'sm_90a';
    if (request === 'wgmma' && !hopper) throw new Error(`the wgmma grouped GEMM kernels need an sm_90a GPU (H100/H200); ${this.ctx.name} is ${this.ctx.arch}: use groupedGemm 'mma' or 'auto'`);
    this.kernels = request === 'auto' ? (hopper && AUTO_WGMMA ? 'wgmma' : 'mma') : request;
  }

  /** The kernel of one product in the chosen set (bf16Grads: the wgmma weight product into bf16 gradients), allowed its shared memory. */
  private kernel(product: 'fwd' | 'dx' | 'dw', bf16Grads = false) {
    const wgmma = this.kernels === 'wgmma';
    const k = wgmma ? this.wgmmaFile.kernel(`grouped_wgmma_${product}_bf16${bf16Grads ? '_gbf16' : ''}`) : this.mmaFile.kernel(`grouped_${product}_bf16`);
    const smem = !wgmma ? MMA_SMEM : product === 'dw' ? WGMMA_DW_SMEM : WGMMA_SMEM;
    k.allowDynamicShared(smem, `grouped GEMM (${this.kernels})`);
    return { k, smem };
  }

  groupedLinear(out: Tensor, x: Tensor, weights: readonly Tensor[], offsets: Tensor): void {
    const { M, N, K } = this.check('groupedLinear', x, out, weights, offsets);
    if (!this.kernelsTake(x, out, weights, K, N)) { this.perExpert('forward', out, x, weights, offsets); return; }
    this.launch('fwd', [Math.ceil(N / BN), this.rowTiles(M, weights.length), 1], out, x, weights, offsets, M, N, K);
  }

  groupedLinearBackwardData(dx: Tensor, dy: Tensor, weights: readonly Tensor[], offsets: Tensor): void {
    const { M, N, K } = this.check('groupedLinearBackwardData', dx, dy, weights, offsets);
    if (!this.kernelsTake(dy, dx, weights, K, N)) { this.perExpert('data', dx, dy, weights, offsets); return; }
    this.launch('dx', [Math.ceil(K / BN), this.rowTiles(M, weights.length), 1], dx, dy, weights, offsets, M, N, K);
  }

  groupedLinearWeightGrad(dweights: readonly Tensor[], dy: Tensor, x: Tensor, offsets: Tensor): void {
    const { M, N, K } = this.check('groupedLinearWeightGrad', x, dy, dweights, offsets);
    // Both sets accumulate into f32 gradients; the wgmma set also into bf16 ones (the lean recipe
    // with one micro-batch). Otherwise (bf16 gradients on the mma set, mixed types) the product
    // goes per expert through cuBLASLt, which reads the counts on the host (one wait per product).
    const f32 = dweights.every((g) => g.dtype === 'f32'), bf16 = dweights.every((g) => g.dtype === 'bf16');
    const typed = f32 || (bf16 && this.kernels === 'wgmma');
    if (!typed || !this.kernelsTake(x, dy, dweights, K, N)) { this.perExpert('weight', dy, x, dweights, offsets); return; }
    if (M === 0) return;
    const E = dweights.length;
    const table = this.tableOf(dweights);
    const args = this.args.ptr(0, table).ptr(1, devicePtr(dy)).ptr(2, devicePtr(x)).ptr(3, devicePtr(offsets))
      .i32(4, E).i32(5, M).i32(6, N).i32(7, K);
    const { k, smem } = this.kernel('dw', !f32);
    k.launch([Math.ceil(K / BN), Math.ceil(N / BM), E], [THREADS, 1, 1], smem, args);
  }

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

  /** The device address of a table holding the experts' base addresses (u64 × E), uploaded on first use. */
  private tableOf(mats: readonly Tensor[]): bigint {
    if (this.table.length < mats.length) this.table = new BigUint64Array(mats.length);
    mats.forEach((w, e) => { this.table[e] = devicePtr(w); });
    const key = this.table.subarray(0, mats.length).join(',');
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
    const block = this.allocator.alloc(8 * mats.length);
    this.ctx.upload(block.ptr, this.table, 8 * mats.length);
    this.tables.set(key, block);
    return block.ptr;
  }

  /** f32: one cuBLASLt product per expert with the options ops/linear.ts uses (offsets read on the host). */
  private perExpert(product: Product, a: Tensor, b: Tensor, mats: readonly Tensor[], offsets: Tensor): void {
    const off = new Int32Array(offsets.size);
    this.ctx.download(off, devicePtr(offsets), 4 * offsets.size);
    const rows = (t: Tensor, s: number, en: number) => t.view([en - s, t.shape[1]!], [t.shape[1]!, 1], t.offset + s * t.shape[1]!);
    mats.forEach((w, e) => {
      const s = off[e]! - off[0]!, en = off[e + 1]! - off[0]!;
      if (en === s) return;
      const av = rows(a, s, en), bv = rows(b, s, en);
      if (product === 'forward') this.gemm.matmul(av, bv, w, { transB: true });
      else if (product === 'data') this.gemm.matmul(av, bv, w, {});
      else this.gemm.matmul(w, av, bv, { transA: true, beta: 1 });
      av.dispose(); bv.dispose();
    });
  }
}
