// Grouped expert GEMM on Hopper (sm_90a) with TMA copies and a producer warpgroup: the three
// products of grouped_gemm.cu (read its header first: products, the row-tile scheduler over the
// device offsets, shape rules). Forward and backward data use its row tiles and its epilogue
// (bf16 output, rounded once, overwritten; rows past the expert's end and columns past the width
// are not stored). All three products are persistent kernels: at most one CTA per SM, each
// walking a list of output tiles with the copy ring running on from tile to tile ("Scheduling",
// "Weight product" below). Tested against the CPU backend and the wgmma set on an H100
// (2026-12-07); measured times per product are in ops/grouped_gemm.ts.
//
// Why another kernel: grouped_gemm_wgmma.cu copies operands with cp.async from the same threads
// that issue the wgmmas and meets at a CTA barrier every k-step; at the bench shapes it runs at
// ~45% of the 0.36 ms floor per product. Here the copies are the copy engine's, issued by one
// thread, and the MMA warps only wait on mbarriers.
//
// CTA: 384 threads, a 128 × 256 output tile (BM × BN), reduction steps of BK = 64.
//   WG0, producer (setmaxnreg.dec to 40 registers): thread 0 issues, per k-step, one TMA copy of
//     the A tile (X or dY: 128 rows × 64) and the B tile's pieces into a STAGES = 4 ring; each
//     stage's "full" mbarrier completes by byte count, its "empty" one when every consumer warp
//     has finished the wgmmas that read it.
//   WG1, WG2, consumers (setmaxnreg.inc to 232): rows 0..63 and 64..127 of the tile, 128 f32
//     accumulators a thread (wgmma m64n256k16), one wgmma group kept in flight: after issuing
//     step kt they wait for step kt − 1 and give its stage back, and the tile's last stage once
//     its wgmmas are done, before the epilogue.
// Why BN = 256: a 64 × 256 wgmma reads its 64-row A slice once per 256 columns (a 128-wide tile
// reads it twice as often), so the shared-memory operand traffic per FLOP drops by a quarter,
// and 128 accumulators still fit the consumers' registers. The bench widths are 2048 = 8 × 256
// and 1408 = 5 × 256 + 128: a column tile with at most 128 valid columns runs m64n128k16 and
// copies half the B pieces (`narrow`), so the 1408 products compute no padding columns.
// Shared memory: 4 stages × (A 16 KiB + B 32 KiB) = 192 KiB, 8 mbarriers, 1024 bytes to align
// the window: one CTA per SM; five stages would not fit the 227 KiB.
//
// Operands, all 128-byte swizzled by the copy engine (the layouts of grouped_gemm_wgmma.cu):
//   A, K-major: box (64, 128) of a map over the whole [M, red] tensor at (k0, row0), row0 the
//     tile's first row, any row; rows past M arrive as zeros. Rows past the expert's end are the
//     next expert's: they are computed with this expert's weights and masked in the epilogue.
//   B forward, W_e [N, K] K-major: two boxes (64, 128) at (k0, j0) and (k0, j0 + 128); piece p of
//     the stage at p·16 KiB, so the 256 rows are one K-major tile (SBO 1024, k16 step +32 bytes).
//   B backward data, W_e as [N reduction rows, K output columns], MN-major: four boxes (64, 64)
//     at (j0 + 64b, k0), column block b at b·8 KiB (LBO 8 KiB, SBO 1024, k16 step +2048 bytes).
//   Columns past the width (the map's extent) arrive as zeros.
// The weights of the E experts are not one strided tensor (FSDP flats interleave them), so each
// expert has its own CUtensorMap: the host encodes E maps into a device array (128 bytes each,
// cached by content like the address tables; ops/grouped_gemm.ts) and the producer passes the
// global address of map e to cp.async.bulk.tensor. The array was written by a host copy, so the
// producer makes map e visible to the tensormap proxy (fence.proxy.tensormap … acquire.sys, as
// the CUDA programming guide prescribes for maps in global memory) before its first copy through
// it: when a tile's expert differs from the previous tile's, which is once per expert the CTA
// uses, since its experts come in increasing order. The A map is a __grid_constant__ parameter.
//
// Scheduling (forward and data): tiles u = y·gx + x over gx = ceil(width / 256) column tiles and
// gy = ceil(M/128) + E row-tile slots (grouped_gemm.cu's grid, flattened; slots past the last
// row tile are empty), column tiles fastest, so the CTAs that run together mostly share a row
// tile and its A rows come from L2. The grid is min(gx·gy, SMs); in round r, CTA b takes tile
// r·G + (b + r) mod G (G = the grid), so the G CTAs together take tiles rG..rG + G − 1 as with a
// stride of G, but each CTA's column tile moves on every round. Why: with tiles b, b + G, … and
// G a multiple of gx (132 SMs, gx = 6 at width 1408), CTA b would get column tile b mod 6 in
// every round, and the 22 CTAs on the narrow last column (128 columns, half the work) would idle
// half the time: 110 CTAs doing the 2080 wide tiles take 18.9 tile times where 17.3 is the
// balanced share, 9%. Producer and consumers walk the same list over the same offsets and agree
// on every tile's k-steps (red / 64, every tile) without talking; a row-tile cursor
// (ggc::RowTileCursor) resumes the expert walk where the CTA's previous tile left it, so finding
// a tile costs ~3 offset reads instead of a scan over ~32 experts.
//   Why persistent (as the weight product, below): a CTA per tile (192 KiB of ring: one CTA per
//   SM) would expose on every tile its prologue (the find, filling 4 stages: ~3 µs of L2 latency
//   and copies) and its epilogue (~1.5 µs of bf16 stores; half on a narrow tile) around a main
//   loop of 22 or 32 k-steps of ~0.7 µs at the MMA peak (2·128·256·64 FLOP at 790 TFLOP/s / 132).
//   Persistent, the ring runs on across tiles (position `it` on both sides): the producer issues
//   the next tile's first stages while the consumers finish this one's last three steps and its
//   epilogue, so only the epilogue stays exposed.
//   Bench-shape prediction (49152 rows over 64 experts: ~416 row tiles, 384 full and most
//   experts' partial last one; per tile, a CTA per tile → persistent, µs; sums over 132 SMs):
//     2048 → 1408 (32 k-steps; 5 wide + 1 narrow column tile: 2080 wide, 416 narrow tiles):
//       wide 3 + 22.4 + 1.5 → 23.9, narrow 3 + 11.2 + 0.75 → 12: 471 → 415 µs, −12%;
//     1408 → 2048 (22 k-steps; 8 wide column tiles: 3328 tiles): 3 + 15.4 + 1.5 → 16.9:
//       502 → 427 µs, −15%.
//   If the main loops run at the ~470 TFLOP/s L2 cap of the weight product's estimate (1.18 µs a
//   step), the same 3 µs a tile are −8% and −10% (737 → 681, 768 → 692 µs): ~10% a product.
// bench/grouped_gemm_model.py replays the tile walk, boxes, descriptors, masks and the mbarrier
// ring across each CTA's tiles.
// What bounds the forward and data products (a reading of ops/grouped_gemm.ts's table, not a
// profile): the wgmma set's 128 × 128 tiles read 64 FLOP per byte of operands from L2, these
// 128 × 256 tiles 85.3, 1.33× as many, and the wgmma times are 1.27–1.41× these (mean 1.34). Both
// sets then move ~5–6 TB/s of operands from L2 into the SMs (283.5 GFLOP / 0.561 ms / 85.3 = 5.9
// TB/s here), which is about what an H100's L2 delivers, so the products run at the operand
// traffic's limit, not the MMAs' (~500 of 790 TFLOP/s). Only fewer bytes per FLOP would move
// them: larger CTA tiles (the accumulators of 128 × 256 already fill two consumer warpgroups'
// registers) or one weight tile sent to two CTAs (the CTA pairs below).
//
// CTA pairs (grouped_tma_pair_*: the forward, data, gate-and-up data and SwiGLU products of the
// `tma_pair` set, 'auto' on sm_90a). Clusters of two CTAs on neighbouring row tiles (row-tile slots 2y and
// 2y + 1, one column tile): when both tiles are one expert's they need the same weight tile, and each CTA copies
// half of its pieces into both CTAs' stages at once (cp.async.bulk.tensor … multicast::cluster),
// so a pair reads 64 KiB a k-step from L2 instead of 96: a third less. When the two tiles are different experts' (an expert's last row tile beside
// the next one's first: about one pair in seven at ~6.5 row tiles an expert), each copies all of
// its own. The protocol: a stage's "full" barrier counts all 48 KiB however they come (a peer's
// bytes may land before this CTA's own expect_tx: the transaction count goes below zero until
// then, and the phase cannot complete while the producer's arrival is pending); its "empty"
// barrier waits for the consumer warps of both CTAs (16 arrivals, 8 of them remote through mapa),
// because the peer's copies write into this CTA's stage. The two CTAs walk the same pair tiles
// with the same k-steps, so their rings stay in step; a slot 2y + 1 past the last row tile is
// computed on zeros and not stored, so the pair never splits. bench/grouped_gemm_pair_model.py
// replays the pair walk and the two rings, the end included.
// History: ce87017 had this protocol and measured 1.3–1.6× slower than the single-CTA kernels
// (0.815–0.878 ms a product against 0.547–0.634, H100, 2026-12-07), correct at every tested shape.
// What differs here, each a suspect read from that code, none yet measured:
//   Why a whole producer warp: there, thread 0 alone ran the producer loop and the other 127
//   producer threads, lanes 1–31 of its own warp among them, went straight to the closing
//   cluster barrier (not .aligned) and waited there for the whole kernel, so warp 0 stayed
//   diverged with 31 lanes in a barrier wait while lane 0 issued every copy; how the scheduler
//   shares the warp between those two paths is not specified, and every k-step of both CTAs waits
//   on that lane. Here all of warp 0 walks the tiles and waits on the empty barriers, lane 0
//   issues the expect_tx and the copies, and the warp meets at __syncwarp every k-step; warps
//   1–3 of the producer warpgroup end at once, as in the single-CTA kernels.
//   Why no closing cluster barrier: a CTA's shared memory must outlive the peer's last remote
//   arrival on its empty barriers and the peer's last multicast into its stages. Here warp 0,
//   after its last k-step, waits for the last round of every stage to be released by both CTAs'
//   consumers (drain_ring): each copy into this CTA was consumed by then and each remote arrival
//   had landed, and the other warps end without waiting for anything.
//   Why the remote arrival has the default semantics (release at CTA scope) and not
//   .release.cluster: it publishes no data, and a cluster-scope release orders every earlier
//   memory operation of the arriving thread first (the previous tile's epilogue stores among
//   them), once a k-step for each of the 8 consumer warps.
//   The cluster barrier after the barrier inits is .aligned, each warp converged by __syncwarp.
// Not changed: the grid, 2·min(pair tiles, cuOccupancyMaxActiveClusters) (bench gemm --grouped
// prints both counts), and the lock-step of a pair (a stage is refilled when the slower CTA's
// consumers release it): multicast needs it, and with 4 stages the two CTAs, which run the same
// k-steps, drift at most a few stages apart. Prediction (bench shapes, if the products are bound
// by the L2 bytes): forward/data 0.56–0.66 ms → ~0.45 ms each.
//
// Weight product, dW_e[N, K] = dY_eᵀ·X_e + beta·dW_e (beta 0 overwrites, and an expert with no
// rows gets zeros; beta 1 accumulates, and such an expert is left alone), f32 or bf16 gradients
// (bf16: f32 sum, one rounding), written through the gradients' address table.
//   Tile: 128 dW rows (columns of dY) × 256 dW columns (columns of X), reduction over the
//   expert's rows in steps of 64. Both operands are MN-major: a stage's A is two boxes (64
//   values, 64 rows) of one map over the whole dY [M, N] at (i0, i0 + 64; row), B four such boxes
//   of X [M, K] (two on a narrow column tile), each box an 8 KiB column block (LBO 8 KiB, SBO
//   1024, k16 step +2048 bytes); the same 48 KiB stages and ring as above. A box starts at any
//   row (s + 64·kt). Rows of the last step past the expert's end belong to the next expert (or
//   lie past M, zeros): consumer warpgroup h reads only dY block h, so after the stage lands it
//   zeroes rows valid.. of that block (whole 128-byte rows, which the swizzle leaves in place,
//   ≤ 4 16-byte stores a thread, last step only), fences them into the async proxy and meets its
//   own 128 threads at a named barrier; no cross-warpgroup wait. X's rows there stay (0 · a
//   finite activation; a non-finite one makes the step's loss non-finite anyway).
//   Per full tile at the bench's mean 768 rows: 2·128·256·768 = 50.3 MFLOP, 12 k-steps, operands
//   (128 + 256)·768·2 = 590 KB read from L2: 85 FLOP/byte (a 128 × 128 tile: 64). At 790 TFLOP/s
//   over 132 SMs the MMAs take 8.4 µs (0.7 µs a step); at the ~5.5 TB/s of L2 that caps
//   wgmma's 128 × 128 tiles near 45% of peak, 85 FLOP/byte allows ~470 TFLOP/s: ~14 µs a tile.
//   Epilogue: 128 KiB of f32 written (beta 0), also read (beta 1); bf16 half of each.
//   Why persistent (grid = min(tiles, SMs), CTA b takes rotated_tile(r) in round r): with a 12-step
//   reduction, a CTA per tile would expose its prologue (filling 4 stages: ~3 µs of L2 latency
//   and copies) and its epilogue (1-3 µs) on every tile, ~30% of its main loop; two CTAs per SM
//   cannot fit (192 KiB of ring, 2 × 128 × 128 accumulator registers). Persistent, the ring runs
//   on across tiles (ring position `it` on both sides), so the producer fills the next tile's
//   stages while the consumers store this one and the consumers start on full stages; only the
//   epilogue's own time stays exposed. With beta 1 the producer also asks the copy engine to
//   prefetch the tile's old gradient rows into L2 (cp.async.bulk.prefetch.L2) before the tile's
//   first step, ≥ 12 steps before the epilogue reads them, and the epilogue loads 16 pairs
//   before storing any.
//   Why static tile striding rather than an atomic counter: tiles are expert-major, column tiles
//   fastest, so a CTA's ~43 bench tiles sample every part of the expert skew (0.4–1.6× the mean)
//   and the CTAs' sums differ by a few %; a counter would need resetting per launch and a tile
//   queue from the producer to the consumers. Producer and consumers walk the same tiles and
//   read the same offsets, so they agree on each tile's k-steps without talking.
//   Bench-shape prediction (283.5 GFLOP a product; 5632 tiles for dW [1408, 2048], 6144 with
//   1024 narrow for [2048, 1408]; ~43 tiles a CTA): main loops ~0.60 ms at the L2 cap, plus
//   ~43 exposed epilogues: f32 beta 0 ~0.67 ms, f32 beta 1 ~0.75 ms (HBM floor 0.54 ms: 1.48 GB
//   of gradient and 0.34 GB of operands at 3.35 TB/s), bf16 beta 1 ~0.70 ms; wgmma's kernel
//   measured 1.31 (f32 beta 1) and 1.00 ms (bf16).
// bench/grouped_gemm_tma_dw_model.py replays its tile walk, boxes, zeroing, descriptors,
// epilogue and the ring across tiles.

// Weight product in CTA pairs (grouped_tma_pair_dw_bf16 / _gbf16, the tma_pair set). Why: at 85
// FLOP per byte of operands the weight product measured ~400–435 TFLOP/s (0.65–0.70 ms a product,
// H100), the L2-bound rate the forward had before its pairs (header "CTA pairs", which took it to
// ~490–520). Two CTAs of a cluster compute dW tiles that read the same X boxes (32 of each
// k-step's 48 KiB): each copies its own dY blocks (16 KiB) and half of X's blocks into both CTAs
// (multicast), so a CTA reads 32 KiB a k-step from L2 instead of 48, a third less, as the
// forward's pairs do. Unlike the forward's, a pair's two tiles always share their operand: they
// are one expert's (the same rows, the same k-steps) at the same column tile, so there is no
// unshared case. The pairs, by the launch's `twin`:
//   one product (twin 0): row tiles 2p and 2p + 1 of dW. At N = 2048 (16 row tiles, the down
//   projection's gradient) every pair is whole; at N = 1408 (11) the sixth pair's second tile is
//   a phantom: its dY columns lie past N, arrive as zeros and nothing is stored, 1/12 of the
//   product's MMA time spent on nothing.
//   two products over the same X (twin 1, Backend.groupedLinearWeightGradPair: the experts' gate
//   and up gradients, N = 1408, K = 2048): CTA 0 computes tile (p, j) of the first product and CTA
//   1 the same tile of the second (dy2_map, the table's second E addresses), so the 11 row tiles
//   need no phantom, and the two products are one launch instead of two (one ring fill and one
//   tail instead of two).
// The protocol is the forward pairs' (header "CTA pairs"): each stage's full barrier counts all 48
// KiB however they come, its empty barrier waits for the consumer warps of both CTAs (the peer's
// multicast writes this CTA's stage), the producer is warp 0 with lane 0 issuing, and it drains
// the ring before the CTA ends. A consumer warpgroup zeroes the dY rows past the expert's end in
// its own CTA's stage only (the dY blocks are never multicast). Squares: every tile of every pair
// writes its 8 partials, the phantom its zeros, at index 2·(pair tile) + rank.
// Each tile's wgmmas and k-steps are the single kernel's, so the gradients are its bits (tested).
// Prediction (bench shapes, if the product stays bound by L2 bytes): 0.65–0.70 → ~0.50 ms a
// product (the down's), and the gate-and-up pair ~1.0 ms against 2 × 0.695; the lean step's nine
// launches (6.35 ms, ~401 TFLOP/s, bench train --kernels) → six, ~4.7 ms.
// Measured (H100, 2026-12-08 00:28–00:33 UTC, bench gemm --grouped and bench train --kernels):
// beta 0, f32, 0.714 → 0.650 ms (N = 1408, a phantom in 12) and 0.683 → 0.671 (N = 2048); the
// gate-and-up pair 1.414 → 1.299 ms (f32) and 1.540 → 1.376 (bf16); the lean step's weight
// products 6.35 ms in 9 launches → 6.05 in 6, and the lean step 121,483 → 122,257 tokens/s in the
// same call (--pair_dw=false against the default). So the third fewer L2 bytes bought 5–11%: the
// weight product is not bound by L2 bytes the way the forward was. The next suspect is the
// epilogue, which the consumers run exposed after every tile of ~12 k-steps (128 KiB of f32
// stores, 64 KiB of bf16; the bf16 one is slower than the f32 one here, 1.540 against 1.414 ms
// for the pair under tma, though it writes half the bytes: its 4-byte stores fill half of each
// 32-byte sector a warp touches). Staging the tile in shared memory and storing it by TMA while
// the consumers start the next tile is the change to try (bf16: 64 KiB, with three ring stages).
//
// SwiGLU (the experts' gate and up in one forward, grouped_tma_fwd_swiglu_bf16): a 128 × 256 tile
// holds 128 columns of the gate product (piece 0 of the B stage: rows jp..jp + 127 of Wg_e) and
// the same 128 columns of the up product (piece 1: the same rows of Wu_e), so each consumer thread
// holds g and u of the same (row, column) in d[4j..] and d[4(j + 16)..] (wgmma_k16's layout) and
// the epilogue stores G, U (for backward) and H = silu(G)·U from the values it rounded, with
// swiglu.cuh's arithmetic: the bits of the gate and up products and the SwiGLU kernel. Saves the
// SwiGLU pass's read of G and U (2·M·N bf16) and a launch, and the narrow last column tile of
// each product at N = 1408 (11 gate-and-up tiles instead of 2 × (5 wide + 1 narrow)).
//
// Gate-and-up data product (grouped_tma_dx_gate_up_bf16; grouped_tma_pair_dx_gate_up_bf16 in CTA
// pairs): dX = dG_e·Wg_e + dU_e·Wu_e, x's gradient through the gate and the up products, as one
// data product over the 2N-long reduction [dG dU]·[Wg_e; Wu_e]: k-steps 0..N/64 − 1 copy dG and
// Wg_e, the rest dU and Wu_e, into the same accumulators. dX is written once and rounded once,
// where two data products and autograd's add write two [M, K] bf16 tensors, read them both and
// write a third (the add: ~0.71 ms a step on an H100, issue 16), and each tile's prologue and
// epilogue serve twice the k-steps. Its values differ from that sum of two rounded products by
// bf16 rounding (closer to the exact sum); the CPU oracle keeps the two roundings and the add
// (backend/grouped_data_pair.ts: the golden demo and the CPU equivalence tests depend on those
// bits), and test/cuda_grouped_gemm.test.ts checks this kernel against it within bf16 tolerance.
// Bench-shape estimate (data 1408 → 2048 measured 0.555 ms a product, ops/grouped_gemm.ts):
// ~1.05–1.1 ms for the kernel (twice the k-steps, half the epilogues) against 2 × 0.555 + 0.71 =
// 1.82 ms. Not yet run on a GPU.
//
// Gradient norm: with beta 0 the weight product can also leave the Σ of the squares of what it
// wrote (autograd/grad_squares.ts), so the step's norm pass (sum_squares_multi, at its byte
// floor) need not read the expert gradients, ~74% of the bench model's 9 GB, again: ~2.2 ms.
// Measured (H100, 2026-12-07): sum_squares_multi 3.08 → 0.83 ms, plus 0.20 ms for the nine
// one-block final sums; the bench step 96,886 → 99,737 tokens/s.
// The epilogue has the values in registers as it stores them; each consumer warp adds its
// squares (of the stored values: bf16 ones rounded) with shuffles and writes one partial per
// tile, so no atomics and no order that depends on the schedule; sum_squares_multi.cu's final
// reduction adds the partials in a fixed order (ops/grouped_gemm.ts). Cost: 2 FMAs per stored value and one shuffle reduction a
// tile, beside ~1.5 µs of stores.
#include "common.cuh"
#include "grouped_gemm_common.cuh"
#include "swiglu.cuh"

#if !defined(GGT_BM) || !defined(GGT_BN) || !defined(GGT_BK) || !defined(GGT_STAGES) || !defined(GGT_THREADS) || !defined(GGT_SMEM)
#error "GGT_BM, GGT_BN, GGT_BK, GGT_STAGES, GGT_THREADS and GGT_SMEM are set by ops/grouped_gemm.ts (GROUPED_GEMM_TMA_DEFINES)"
#endif

namespace ggt {

typedef unsigned int u32;
typedef unsigned long long u64;

constexpr int BM = GGT_BM, BN = GGT_BN, BK = GGT_BK, STAGES = GGT_STAGES, THREADS = GGT_THREADS;
static_assert(BM == 128 && BN == 256 && BK == 64 && THREADS == 384,
              "copies, descriptors and the epilogue are written for 128×256×64 tiles, a producer and two consumer warpgroups");
static_assert(STAGES >= 2, "a ring");
constexpr int A_BYTES = BM * BK * 2;         // 16 KiB
constexpr int B_BYTES = BN * BK * 2;         // 32 KiB
constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
constexpr int FWD_PIECE = 128 * BK * 2;      // forward B box: 128 weight rows × 64 k
constexpr int DX_PIECE = BK * 64 * 2;        // data B box: 64 reduction rows × 64 output columns
constexpr int BAR_OFFSET = STAGES * STAGE_BYTES;
constexpr int SMEM = BAR_OFFSET + 2 * STAGES * 8 + 1024;  // + full/empty barriers, + window alignment
static_assert(GGT_SMEM == SMEM, "GGT_SMEM (ops/grouped_gemm.ts): STAGES × 48 KiB, the barriers and 1024 bytes to align the window");
static_assert(SMEM <= 232448, "over the 227 KiB a Hopper block may use");
constexpr int CONSUMER_WARPS = 8;            // arrivals that free a stage
constexpr int PRODUCER_REGS = 40, CONSUMER_REGS = 232;  // 128·40 + 256·232 = 64512 ≤ 65536

// A CUtensorMap: 128 opaque bytes, 64-byte aligned (the host encodes them, tensor_map.ts).
struct alignas(64) TensorMap {
  u64 opaque[16];
};

// ---- mbarriers ----
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) { asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count)); }
__device__ __forceinline__ void mbar_arrive(u32 bar) { asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory"); }
// One arrival plus `bytes` that the copies naming this barrier must write before the phase completes.
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
  u32 done;
  do {
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(bar), "r"(parity) : "memory");
  } while (!done);
}

// ---- TMA ----
// Makes a map that a host copy wrote to global memory visible to the copy engine's reads.
__device__ __forceinline__ void tmap_acquire(u64 map) { asm volatile("fence.proxy.tensormap::generic.acquire.sys [%0], 128;" ::"l"(map) : "memory"); }
__device__ __forceinline__ void tmap_prefetch(u64 map) { asm volatile("prefetch.tensormap [%0];" ::"l"(map) : "memory"); }
// Box of a 2-D map at (c0 innermost, c1) into shared memory at dst (1024-byte aligned), completing
// the box's bytes on bar; elements outside the tensor arrive as zeros and count as bytes.
__device__ __forceinline__ void tma_load_2d(u32 dst, u64 map, u32 bar, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];"
               ::"r"(dst), "l"(map), "r"(bar), "r"(c0), "r"(c1) : "memory");
}

// ---- clusters (the tma_pair kernels, header: "CTA pairs") ----
__device__ __forceinline__ u32 cluster_rank() { u32 r; asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r)); return r; }
__device__ __forceinline__ u32 cluster_id() { u32 r; asm volatile("mov.u32 %0, %%clusterid.x;" : "=r"(r)); return r; }
__device__ __forceinline__ u32 cluster_count() { u32 r; asm volatile("mov.u32 %0, %%nclusterid.x;" : "=r"(r)); return r; }
// Every thread of both CTAs: the release orders this CTA's barrier inits before the peer's first
// remote arrival or multicast, the acquire the peer's before this CTA's. .aligned wants each warp
// converged, hence the __syncwarp (warp 0 comes from thread 0's inits).
__device__ __forceinline__ void cluster_sync() {
  __syncwarp();
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// One arrival on the mbarrier at bar's offset in cluster CTA `rank`. The default semantics
// (release at CTA scope), not .release.cluster: the arrival publishes no data, it only says
// that this warp's wgmmas have finished reading the stage (wgmma.wait_group returned) before the
// peer's copies overwrite it, and a cluster-scope release would order every earlier memory
// operation of the thread (the previous tile's epilogue stores) before the arrival.
__device__ __forceinline__ void mbar_arrive_remote(u32 bar, u32 rank) {
  u32 remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(bar), "r"(rank));
  asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];" ::"r"(remote) : "memory");
}
// tma_load_2d into the same offset dst of every CTA in `mask`, completing the box's bytes on the
// mbarrier at bar's offset in each of them.
__device__ __forceinline__ void tma_load_2d_multicast(u32 dst, u64 map, u32 bar, int c0, int c1, unsigned short mask) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%3, %4}], [%2], %5;"
               ::"r"(dst), "l"(map), "r"(bar), "r"(c0), "r"(c1), "h"(mask) : "memory");
}

// ---- wgmma ----
// Shared-memory matrix descriptor, 128-byte swizzle (layout type 1 in bits 62-63).
__device__ __forceinline__ u64 desc(u32 addr, u32 lead_bytes, u32 stride_bytes) {
  return static_cast<u64>((addr & 0x3FFFF) >> 4) | (static_cast<u64>(lead_bytes >> 4) << 16) |
         (static_cast<u64>(stride_bytes >> 4) << 32) | (1ull << 62);
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }

#define GGT_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define GGT_D64(i) GGT_D8(i), GGT_D8(i + 8), GGT_D8(i + 16), GGT_D8(i + 24), GGT_D8(i + 32), GGT_D8(i + 40), GGT_D8(i + 48), GGT_D8(i + 56)
#define GGT_R64 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define GGT_R128 GGT_R64 ", " \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"

// d (64 × WN f32) += A (64×16) · B (16 × WN), both in shared memory (TA, TB: 0 K-major, 1 MN-major);
// the caller zeroes d first. Accumulator layout, warp w of the warpgroup (g = lane/4,
// t = lane%4): d[4j+0..1] = row 16w+g, columns 8j+2t..+1; d[4j+2..3] = row 16w+g+8. The n128
// form uses d[0..63], which hold columns 0..127 in the n256 layout as well.
template <int WN, int TA, int TB>
__device__ __forceinline__ void wgmma_k16(float* d, u64 a_desc, u64 b_desc) {
  if constexpr (WN == 256) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" GGT_R128 "}, %128, %129, p, 1, 1, %130, %131;\n}\n"
                 : GGT_D64(0), GGT_D64(64)
                 : "l"(a_desc), "l"(b_desc), "n"(TA), "n"(TB));
  } else {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" GGT_R64 "}, %64, %65, p, 1, 1, %66, %67;\n}\n"
                 : GGT_D64(0)
                 : "l"(a_desc), "l"(b_desc), "n"(TA), "n"(TB));
  }
}

// Barriers: full[s] at bars + 8s, empty[s] at bars + 8(STAGES + s).
__device__ __forceinline__ u32 full_bar(u32 bars, int s) { return bars + 8u * s; }
__device__ __forceinline__ u32 empty_bar(u32 bars, int s) { return bars + 8u * (STAGES + s); }

__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
  u32 packed;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(hi), "f"(lo));
  return packed;
}

__device__ __forceinline__ float2 load_pair(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ float2 load_pair(const bf16* p) {
  const u32 v = *reinterpret_cast<const u32*>(p);
  return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xFFFF0000u));
}
__device__ __forceinline__ void store_pair(float* p, float lo, float hi) { *reinterpret_cast<float2*>(p) = make_float2(lo, hi); }
__device__ __forceinline__ void store_pair(bf16* p, float lo, float hi) { *reinterpret_cast<u32*>(p) = pack_bf16x2(lo, hi); }

// A value as the store below leaves it in a G: itself (f32), or rounded to nearest even (bf16,
// as cvt.rn.bf16x2 in pack_bf16x2 rounds it).
__device__ __forceinline__ float as_stored(float v, const float*) { return v; }
__device__ __forceinline__ float as_stored(float v, const bf16*) { return to_f32(from_f32<bf16>(v)); }

// C (G = f32, or bf16 rounded once) = acc + beta·C for the warpgroup's rows i < rows and columns
// col < cols (even, so col < cols ⇒ col + 1 < cols) of the tile at C (row stride ldc); beta 0
// does not read C (the forward and data products' bf16 outputs, a first gradient write). With
// beta 1 the old values of 16 pairs are loaded before any is stored, so the loads overlap (the
// weight product's producer prefetched the tile into L2). With SQUARES it returns the thread's
// Σ of the squares of the values it stored, as stored (the gradient norm's share; else 0).
template <bool SQUARES = false, typename G>
__device__ __forceinline__ float store_tile(const float (&acc)[128], G* C, long long ldc, int half, int rows, int cols, int beta) {
  const int w = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  constexpr int CHUNK = 16;
  float squares = 0.f;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int i = half * 64 + w * 16 + (lane >> 2) + 8 * h;
    if (i >= rows) continue;
    G* row = C + (long long)i * ldc + 2 * (lane & 3);
#pragma unroll
    for (int j0 = 0; j0 < 32; j0 += CHUNK) {
      float2 old[CHUNK];
#pragma unroll
      for (int j = 0; j < CHUNK; ++j)
        if (beta && 8 * (j0 + j) + 2 * (lane & 3) < cols) old[j] = load_pair(row + 8 * (j0 + j));
#pragma unroll
      for (int j = 0; j < CHUNK; ++j) {
        if (8 * (j0 + j) + 2 * (lane & 3) >= cols) continue;
        float lo = acc[4 * (j0 + j) + 2 * h], hi = acc[4 * (j0 + j) + 2 * h + 1];
        if (beta) { lo += old[j].x; hi += old[j].y; }  // beta 0 stores acc itself (a −0 stays −0)
        store_pair(row + 8 * (j0 + j), lo, hi);
        if (SQUARES) {
          const float a = as_stored(lo, row), b = as_stored(hi, row);
          squares = fmaf(a, a, fmaf(b, b, squares));
        }
      }
    }
  }
  return squares;
}

// ---- the ring, shared by the three products ----
// Ring position `it` counts a CTA's k-steps over all its tiles, on the producer's side and on each
// consumer warpgroup's: k-step `it` uses stage it % STAGES in round it / STAGES. Both sides carry
// it from tile to tile, so the producer fills the next tile's stages while the consumers finish
// this one (last wgmmas, epilogue). One producer loop and one consumer loop serve all three
// products because the ring protocol (which phase to wait for, which stage to give back when) is
// what a persistent kernel deadlocks on; the products differ only in a stage's boxes (`copy`) and
// the wgmmas that read them (`mma`).

// The ring's barriers, by one thread before the CTA's first barrier: a stage's "full" completes
// by the producer's byte count, its "empty" when every consumer warp has released it; with CL = 2
// the peer's consumer warps too, because the peer's multicast copies write this CTA's stages
// (header: "CTA pairs").
template <int CL = 1>
__device__ __forceinline__ void init_ring(u32 bars) {
  for (int s = 0; s < STAGES; ++s) {
    mbar_init(full_bar(bars, s), 1);
    mbar_init(empty_bar(bars, s), CONSUMER_WARPS * CL);
  }
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// The producer, one tile: k-steps 0..ktiles−1 at ring positions it.. (it advances). A stage is
// refilled once all consumer warps released its previous round (position it − STAGES: the empty
// barrier's phase it / STAGES − 1); copy(kt, full, stage) issues the k-step's boxes, `bytes` in
// all, which complete `full`. One thread, or (WARP, the pair kernels) a whole warp that waits
// together while lane 0 issues, then meets at __syncwarp: header "CTA pairs", why a warp.
template <bool WARP = false, typename Copy>
__device__ __forceinline__ void produce_ring(u32 base, u32 bars, int ktiles, u32 bytes, int& it, Copy copy) {
  for (int kt = 0; kt < ktiles; ++kt, ++it) {
    const int s = it % STAGES;
    if (it >= STAGES) mbar_wait(empty_bar(bars, s), (it / STAGES - 1) & 1);
    const u32 full = full_bar(bars, s);
    if (!WARP || (threadIdx.x & 31) == 0) {
      mbar_arrive_expect_tx(full, bytes);
      copy(kt, full, base + s * STAGE_BYTES);
    }
    if (WARP) __syncwarp();
  }
}

// The pair kernels' producer warp after its last k-step (ring position `it`): waits until the
// consumers of both CTAs have released the last round of every stage, the waits the producer
// would make before positions it..it + STAGES − 1. After that no remote arrival or multicast copy
// names this CTA's shared memory any more, so the CTA may end (its other warps have, or do
// without waiting): header "CTA pairs", the end.
__device__ __forceinline__ void drain_ring(u32 bars, int it) {
  for (int k = 0; k < STAGES; ++k, ++it)
    if (it >= STAGES) mbar_wait(empty_bar(bars, it % STAGES), (it / STAGES - 1) & 1);
}

// Gives stage s back: to this CTA's producer, and with CL = 2 to the peer's, whose multicast
// copies write this stage here too (header: "CTA pairs").
template <int CL>
__device__ __forceinline__ void release_stage(u32 bars, int s) {
  mbar_arrive(empty_bar(bars, s));
  if (CL == 2) mbar_arrive_remote(empty_bar(bars, s), cluster_rank() ^ 1u);
}

// A consumer warpgroup, one tile: k-steps 0..ktiles−1 at ring positions it.. (it advances).
// mma(kt, stage) issues and commits the k-step's wgmmas; one group stays in flight, so position
// it − 1's stage is given back once group it − 1 is done, and the tile's last stage after
// wgmma_wait<0>: every stage exactly once, or the producer would wait forever in a later round.
template <int CL = 1, typename Mma>
__device__ __forceinline__ void consume_ring(u32 base, u32 bars, int ktiles, int& it, Mma mma) {
  const int lane = threadIdx.x & 31;
  for (int kt = 0; kt < ktiles; ++kt, ++it) {
    const int s = it % STAGES;
    mbar_wait(full_bar(bars, s), (it / STAGES) & 1);
    mma(kt, base + s * STAGE_BYTES);
    wgmma_wait<1>();  // group it − 1 is done: its stage may be refilled
    if (kt > 0 && lane == 0) release_stage<CL>(bars, (it - 1) % STAGES);
  }
  wgmma_wait<0>();
  if (ktiles > 0 && lane == 0) release_stage<CL>(bars, (it - 1) % STAGES);  // the tile's last stage
}


// ---- forward and data products: out[M, width] = A[M, red] · B_e (header: "Scheduling") ----

// Tile of CTA blockIdx.x in round r of a persistent walk (header: "Scheduling"): the G CTAs of
// round r take tiles rG..rG + G − 1, CTA b the (b + r) mod G-th, so a CTA's column tile moves
// every round. The tile grows with r, so a CTA stops at its first tile ≥ the total.
__device__ __forceinline__ int rotated_tile(int r) { return r * (int)gridDim.x + (int)((blockIdx.x + r) % gridDim.x); }
// The tile of round r of this CTA's walk, r then advanced: rotated_tile, or with CL = 2 the same
// rotation over clusters (cluster c of C takes the (c + r) mod C-th of round r's C pair tiles;
// both CTAs of a cluster get the same).
template <int CL>
__device__ __forceinline__ int next_round_tile(int& r) {
  if (CL == 1) return rotated_tile(r++);
  const int C = (int)cluster_count();
  const int u = r * C + (int)((cluster_id() + r) % C);
  ++r;
  return u;
}

struct GemmTile {
  int e, row0, rowEnd, j0, cols;  // expert, the tile's rows row0..rowEnd−1 (≤ BM stored), first column, valid columns
};

// The tiles of CTA blockIdx.x, in the order its producer and its consumers both walk them (the
// same offsets and arithmetic, so they agree on every tile without talking). Tile u = y·gx + x:
// column tile x of gx = ceil(width / BN), row-tile slot y of ceil(M/BM) + E (slots past the last
// row tile are empty). Round r covers tiles r·G..r·G + G − 1 (G = gridDim.x) and CTA b takes the
// (b + r) mod G-th of them; u grows with r, so the row-tile cursor only moves forward.
// CL = 2 (header: "CTA pairs"): u is a pair tile, row-tile slots 2y (the cluster's CTA 0) and
// 2y + 1 (CTA 1) at column tile x, over ceil(slots / 2) pair rows; cluster c of C takes the
// (c + r) mod C-th of round r's C pair tiles, the rotation above with clusters for CTAs. Both
// CTAs find both slots (a cursor for the even slots and one for the odd, so each only moves
// forward), so they agree on when to stop and on `shared`: both slots are one expert's, so their
// weight tile is the same and each CTA copies half of it into both. A slot 2y + 1 past the last
// row tile is a phantom for CTA 1: rows M.. (the copy engine's zeros), CTA 0's expert (so
// shared), nothing stored; so a pair never splits and both rings see the same k-steps.
template <int CL = 1>
struct GemmWalk {
  const int* __restrict__ off;
  int E, M, width, gx, total, r = 0;
  ggc::RowTileCursor<BM> rows, odd;
  __device__ __forceinline__ GemmWalk(const int* __restrict__ off_, int E_, int M_, int width_)
      : off(off_), E(E_), M(M_), width(width_), gx((width_ + BN - 1) / BN), total(gx * (((M_ + BM - 1) / BM + E_ + CL - 1) / CL)) {}
  // The CTA's next tile; false when it has none left. shared (CL = 2): the pair's two tiles are
  // one expert's.
  __device__ __forceinline__ bool next(GemmTile& g, bool& shared) {
    const int u = next_round_tile<CL>(r);
    if (u >= total) return false;
    const int y = u / gx;
    g.j0 = (u - y * gx) * BN;
    g.cols = min(BN, width - g.j0);
    shared = false;
    if (CL == 1) return rows.find(off, E, M, y, g.e, g.row0, g.rowEnd);  // false: past the last row tile, as is every later u
    GemmTile mate = g;
    if (!rows.find(off, E, M, 2 * y, g.e, g.row0, g.rowEnd)) return false;
    if (!odd.find(off, E, M, 2 * y + 1, mate.e, mate.row0, mate.rowEnd)) { mate.e = g.e; mate.row0 = M; mate.rowEnd = M; }
    shared = mate.e == g.e;
    if (cluster_rank() == 1) g = mate;
    return true;
  }
};

// How a forward/data product reads the experts' gate and up weights (gemm_produce's GU).
enum GateUp { NO_GATE_UP, GATE_UP_COLUMNS, GATE_UP_REDUCTION };

// The producer: per tile, A at (kt·BK, row0) and B's pieces (B_K: forward, else backward data;
// half of them on a narrow column tile) for each k-step. Expert e's weight map is acquired for
// the copy engine (header: operands) before its first use here: the CTA's experts come in
// increasing order (row-tile slots only grow), so acquiring when the expert changes is once per
// expert the CTA uses, not once per tile.
// GU, how the product reads the experts' gate and up weights (w_maps then holds the E gate maps,
// then the E up maps): not at all (NO_GATE_UP: w_maps[e] is expert e's one weight); side by side
// in the B stage, the SwiGLU forward (GATE_UP_COLUMNS, B_K: the walk's width is 256 per 128 output
// columns, and a tile's two pieces are rows j0/2.. of the gate and of the up weight; header
// "SwiGLU"); one after the other along the reduction, the gate-and-up data product
// (GATE_UP_REDUCTION, !B_K: red = 2N, and k-steps red/2/BK.. copy a_map2 and the up weights at
// k-step − red/2/BK; header "Gate-and-up data product").
// CL = 1: thread 0 alone. CL = 2: the whole of warp 0, lane 0 issuing (produce_ring<true>); with a
// shared weight tile piece p is copied by CTA p mod 2 into both CTAs (each stage's "full" barrier
// counts all of A and B however they come), then the warp drains the ring (drain_ring).
template <bool B_K, GateUp GU = NO_GATE_UP, int CL = 1>
__device__ __forceinline__ void gemm_produce(u32 base, u32 bars, u64 a_map, u64 a_map2, const TensorMap* __restrict__ w_maps,
                                             const int* __restrict__ off, int E, int M, int width, int red) {
  static_assert((GU != GATE_UP_COLUMNS || B_K) && (GU != GATE_UP_REDUCTION || !B_K),
                "gate and up side by side is the SwiGLU forward, along the reduction the data product");
  const bool lead = CL == 1 || (threadIdx.x & 31) == 0;  // the thread that issues fences and copies
  const u32 rank = CL == 2 ? cluster_rank() : 0u;
  if (lead) tmap_prefetch(a_map);
  if (lead && GU == GATE_UP_REDUCTION) tmap_prefetch(a_map2);
  const int ktiles = red / BK, half_k = ktiles / 2;  // half_k: GATE_UP_REDUCTION's first up k-step
  GemmWalk<CL> walk(off, E, M, width);
  int it = 0, acquired = -1;
  bool shared;
  for (GemmTile g; walk.next(g, shared);) {
    const u64 w_map = reinterpret_cast<u64>(w_maps + g.e), up_map = GU != NO_GATE_UP ? reinterpret_cast<u64>(w_maps + E + g.e) : 0;
    if (g.e != acquired) {
      // The fence is per thread: the lane that issues the copies through the map.
      if (lead) {
        tmap_acquire(w_map);
        tmap_prefetch(w_map);
        if (GU != NO_GATE_UP) {
          tmap_acquire(up_map);
          tmap_prefetch(up_map);
        }
      }
      acquired = g.e;
    }
    const int pieces = (B_K ? 2 : 4) >> (g.cols <= BN / 2 ? 1 : 0);  // GATE_UP_COLUMNS: 2 (its tiles are all 256 wide)
    produce_ring<CL == 2>(base, bars, ktiles, A_BYTES + pieces * (B_K ? FWD_PIECE : DX_PIECE), it, [&](int kt, u32 full, u32 ta) {
      const u32 tb = ta + A_BYTES;
      // B piece p: this CTA's own copy, or (shared) CTA p mod 2's into both.
      const auto piece = [&](int p, u32 dst, u64 map, int c0, int c1) {
        if (CL == 1 || !shared) tma_load_2d(dst, map, full, c0, c1);
        else if ((u32)(p & 1) == rank) tma_load_2d_multicast(dst, map, full, c0, c1, 0x3);
      };
      // GATE_UP_REDUCTION's second half: dY2 and the up weight, from their k-step 0.
      const bool up = GU == GATE_UP_REDUCTION && kt >= half_k;
      const int k = up ? kt - half_k : kt;
      tma_load_2d(ta, up ? a_map2 : a_map, full, k * BK, g.row0);
      if constexpr (GU == GATE_UP_COLUMNS) {
        piece(0, tb, w_map, kt * BK, g.j0 / 2);
        piece(1, tb + FWD_PIECE, up_map, kt * BK, g.j0 / 2);
      } else {
        const u64 map = up ? up_map : w_map;
        for (int p = 0; p < pieces; ++p) {
          if (B_K) piece(p, tb + p * FWD_PIECE, map, k * BK, g.j0 + 128 * p);
          else piece(p, tb + p * DX_PIECE, map, g.j0 + 64 * p, k * BK);
        }
      }
    });
  }
  if (CL == 2) drain_ring(bars, it);
}

// A consumer warpgroup's k-steps of one tile: acc (its 64 rows × WN columns) = Σ over the k-steps.
template <int WN, bool B_K, int CL>
__device__ __forceinline__ void gemm_consume(float (&acc)[128], u32 base, u32 bars, int half, int ktiles, int& it) {
  consume_ring<CL>(base, bars, ktiles, it, [&](int, u32 stage) {
    const u32 ta = stage + half * 64 * 128, tb = stage + A_BYTES;
    const u64 da = desc(ta, 16, 1024), db = B_K ? desc(tb, 16, 1024) : desc(tb, DX_PIECE, 1024);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) wgmma_k16<WN, 0, B_K ? 0 : 1>(acc, da + ((kk * 32) >> 4), db + ((kk * (B_K ? 32 : 2048)) >> 4));
    wgmma_commit();
  });
}

// The SwiGLU forward's epilogue (header: "SwiGLU"): G, U and H (row stride ldc) at the warpgroup's
// rows i < rows and the columns col < cols (even) of the tile's 128, as store_tile stores bf16.
__device__ __forceinline__ void store_swiglu_tile(const float (&acc)[128], bf16* G, bf16* U, bf16* H, long long ldc, int half, int rows,
                                                  int cols) {
  const int w = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int i = half * 64 + w * 16 + (lane >> 2) + 8 * h;
    if (i >= rows) continue;
    const long long o = (long long)i * ldc + 2 * (lane & 3);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      if (8 * j + 2 * (lane & 3) >= cols) continue;
      const float g0 = as_stored(acc[4 * j + 2 * h], G), g1 = as_stored(acc[4 * j + 2 * h + 1], G);
      const float u0 = as_stored(acc[4 * (j + 16) + 2 * h], U), u1 = as_stored(acc[4 * (j + 16) + 2 * h + 1], U);
      store_pair(G + o + 8 * j, g0, g1);
      store_pair(U + o + 8 * j, u0, u1);
      store_pair(H + o + 8 * j, swiglu_value(g0, u0), swiglu_value(g1, u1));
    }
  }
}

// The persistent forward/data CTA (grid ≤ the SM count): a producer warpgroup and two consumer
// warpgroups (rows 0..63 and 64..127 of each 128 × 256 tile) over the CTA's tiles of out[M,
// width], reduction `red` (> 0, a multiple of BK); a_map over the [M, red] rows, w_maps[e] over
// expert e's weight (a_map2: GATE_UP_REDUCTION's second A, over dY2; unused otherwise). store(acc,
// tile, half) is the epilogue: store_tile into out, or (GATE_UP_COLUMNS) the SwiGLU's. CL = 2:
// one of a cluster's CTA pair (header: "CTA pairs"); both meet at a cluster
// barrier after initialising their rings (the peer's copies and arrivals name them), and warp 0
// drains the ring before the CTA ends (a CTA's shared memory must outlive the peer's last
// arrival and copy into it).
template <bool B_K, GateUp GU = NO_GATE_UP, int CL = 1, typename Store>
__device__ __forceinline__ void gemm_cta(const TensorMap& a_map, const TensorMap& a_map2, const TensorMap* __restrict__ w_maps,
                                         const int* __restrict__ off, int E, int M, int width, int red, unsigned char* smem_raw, Store store) {
  const u32 base = (ggc::smem_addr(smem_raw) + 1023u) & ~1023u;  // the window is only 16-byte aligned
  const u32 bars = base + BAR_OFFSET;
  const int tid = threadIdx.x, wg = tid >> 7;
  if (tid == 0) init_ring<CL>(bars);
  if (CL == 2) cluster_sync();  // orders this CTA's inits for its own threads too
  else __syncthreads();
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(PRODUCER_REGS));
    // CL = 2: warp 0 whole (header: "CTA pairs", why a warp); warps 1-3 end here as with CL = 1.
    if (CL == 1 ? tid == 0 : tid < 32) {
      gemm_produce<B_K, GU, CL>(base, bars, reinterpret_cast<u64>(&a_map), reinterpret_cast<u64>(&a_map2), w_maps, off, E, M, width, red);
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(CONSUMER_REGS));
  const int half = wg - 1, ktiles = red / BK;
  GemmWalk<CL> walk(off, E, M, width);
  int it = 0;
  bool shared;
  for (GemmTile g; walk.next(g, shared);) {
    float acc[128];
#pragma unroll
    for (int c = 0; c < 128; ++c) acc[c] = 0.f;
    if (g.cols <= BN / 2) gemm_consume<128, B_K, CL>(acc, base, bars, half, ktiles, it);
    else gemm_consume<256, B_K, CL>(acc, base, bars, half, ktiles, it);
    store(acc, g, half);
  }
}

// The forward and data products' CTA, and (GATE_UP_REDUCTION, a_map2 over dY2) the gate-and-up
// data product's: out[M, width] as store_tile stores it.
template <bool B_K, int CL = 1, GateUp GU = NO_GATE_UP>
__device__ __forceinline__ void plain_cta(const TensorMap& a_map, const TensorMap& a_map2, const TensorMap* __restrict__ w_maps,
                                          bf16* __restrict__ out, const int* __restrict__ off, int E, int M, int width, int red,
                                          unsigned char* smem_raw) {
  gemm_cta<B_K, GU, CL>(a_map, a_map2, w_maps, off, E, M, width, red, smem_raw, [&](const float (&acc)[128], const GemmTile& g, int half) {
    store_tile(acc, out + (long long)g.row0 * width + g.j0, width, half, g.rowEnd - g.row0, g.cols, 0);
  });
}

// The SwiGLU forward's CTA (header: "SwiGLU"): G, U, H [M, N] from the 256-wide tiles of gate and
// up columns.
template <int CL = 1>
__device__ __forceinline__ void swiglu_cta(const TensorMap& x_map, const TensorMap* __restrict__ w_maps, bf16* __restrict__ G,
                                           bf16* __restrict__ U, bf16* __restrict__ H, const int* __restrict__ off, int E, int M, int N,
                                           int K, unsigned char* smem_raw) {
  const int width = 2 * 128 * ((N + 127) / 128);
  gemm_cta<true, GATE_UP_COLUMNS, CL>(x_map, x_map, w_maps, off, E, M, width, K, smem_raw, [&](const float (&acc)[128], const GemmTile& g, int half) {
    const int jp = g.j0 / 2;
    const long long o = (long long)g.row0 * N + jp;
    store_swiglu_tile(acc, G + o, U + o, H + o, N, half, g.rowEnd - g.row0, min(128, N - jp));
  });
}


// ---- the weight product: dW_e[N, K] (+)= dY_eᵀ · X_e (header: "Weight product") ----

constexpr int DW_BLOCK = BK * 64 * 2;  // one MN-major column block: 64 reduction rows × 64 values, 8 KiB
static_assert(2 * DW_BLOCK == A_BYTES && 4 * DW_BLOCK == B_BYTES, "A is two column blocks of dY, B four of X");

__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
__device__ __forceinline__ void st_shared_zero16(u32 addr) { asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};" ::"r"(addr), "r"(0) : "memory"); }
// Asks the copy engine to bring `bytes` (a multiple of 16) at a 16-byte-aligned address into L2.
__device__ __forceinline__ void prefetch_l2(const void* p, u32 bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
}

// The output tiles in the order every CTA walks them: tile t is expert t / (tn·tk), then row tile
// (of N, BM rows) and column tile (of K, BN columns), column tiles fastest. CTA b takes tile
// rotated_tile(r) in round r, as the forward does (at K = 1408, 6 column tiles a row tile, plain
// striding would leave 22 of 132 CTAs on the narrow column every round); its producer and consumers walk the same list and read the same offsets,
// so they agree on every tile's k-steps without talking.
// CL = 2 (header: "Weight product in CTA pairs"): t is a pair tile over E · rows · tk, rows =
// ceil(tn / 2) pairs of neighbouring row tiles (2p for the cluster's CTA 0, 2p + 1 for CTA 1;
// past tn a phantom: dY's columns there arrive as zeros and nothing is stored), or with `twin`
// tn rows, row tile p of the first product for CTA 0 and of the second for CTA 1; cluster c of C
// takes the (c + r) mod C-th of round r's C pair tiles. Both CTAs of a pair share the expert,
// its rows and the column tile, so their X boxes are the same.
struct DwTile {
  int e, i0, j0, s, rows, ktiles;  // expert, the tile's first dW row and column, the expert's first row and row count
  int id, second;                  // the tile's index among the launch's (squares' partials), and whether it is the second product's
};
template <int CL = 1>
struct DwWalk {
  const int* __restrict__ off;
  int M, tk, per, total, twin, r = 0;
  __device__ __forceinline__ DwWalk(const int* __restrict__ off_, int E, int M_, int N, int K, int twin_)
      : off(off_), M(M_), tk((K + BN - 1) / BN), twin(twin_) {
    const int tn = (N + BM - 1) / BM;
    per = (CL == 1 || twin ? tn : (tn + 1) / 2) * tk;
    total = E * per;
  }
  // The CTA's next tile; false when it has none left.
  __device__ __forceinline__ bool next(DwTile& d) {
    const int t = next_round_tile<CL>(r);
    if (t >= total) return false;
    d.e = t / per;
    const int rem = t - d.e * per, y = rem / tk;
    d.j0 = (rem - y * tk) * BN;
    const int rank = CL == 2 ? (int)cluster_rank() : 0;
    d.i0 = (CL == 1 || twin ? y : 2 * y + rank) * BM;
    d.id = CL == 1 ? t : 2 * t + rank;
    d.second = CL == 2 && twin && rank == 1;
    int en;
    ggc::expert_rows(off, d.e, M, d.s, en);
    d.rows = en - d.s;
    d.ktiles = (d.rows + BK - 1) / BK;
    return true;
  }
};

// The producer: for each of the CTA's tiles, its k-steps into the ring (ring position `it` runs
// on across tiles, so the producer fills the next tile's stages while the consumers store this
// one). Step kt: dY rows s + 64·kt.. as two column blocks (i0, i0 + 64) and X's rows as four
// (j0 + 64b), two for a narrow tile. Before a tile's first step with beta 1, the old gradient
// tile is prefetched into L2 for the epilogue's read. CL = 1: thread 0 alone. CL = 2: warp 0,
// lane 0 issuing (produce_ring<true>); dY's blocks are this CTA's own (dy2_map for a twin's
// second product), X's block b is copied by CTA b mod 2 into both (each stage's "full" barrier
// counts all of A and B however they come), then the warp drains the ring (drain_ring).
template <typename G, int CL = 1>
__device__ __forceinline__ void dw_produce(u32 base, u32 bars, u64 dy_map, u64 dy2_map, u64 x_map, G* const* __restrict__ dW,
                                           const int* __restrict__ off, int E, int M, int N, int K, int beta, int twin) {
  const bool lead = CL == 1 || (threadIdx.x & 31) == 0;
  const u32 rank = CL == 2 ? cluster_rank() : 0u;
  if (lead) {
    tmap_prefetch(dy_map);
    if (twin) tmap_prefetch(dy2_map);
    tmap_prefetch(x_map);
  }
  DwWalk<CL> walk(off, E, M, N, K, twin);
  int it = 0;
  for (DwTile d; walk.next(d);) {
    if (d.ktiles == 0) continue;
    if (beta && lead) {
      const int rows = min(BM, N - d.i0);
      const u32 bytes = min(BN, K - d.j0) * (u32)sizeof(G);
      const G* g = dW[d.second * E + d.e] + (long long)d.i0 * K + d.j0;
      for (int i = 0; i < rows; ++i) prefetch_l2(g + (long long)i * K, bytes);
    }
    const int bblocks = K - d.j0 <= BN / 2 ? 2 : 4;
    const u64 a_map = d.second ? dy2_map : dy_map;
    produce_ring<CL == 2>(base, bars, d.ktiles, A_BYTES + bblocks * DW_BLOCK, it, [&](int kt, u32 full, u32 ta) {
      const int row = d.s + kt * BK;
      const u32 tb = ta + A_BYTES;
      tma_load_2d(ta, a_map, full, d.i0, row);
      tma_load_2d(ta + DW_BLOCK, a_map, full, d.i0 + 64, row);
      for (int b = 0; b < bblocks; ++b) {
        if (CL == 1) tma_load_2d(tb + b * DW_BLOCK, x_map, full, d.j0 + 64 * b, row);
        else if ((u32)(b & 1) == rank) tma_load_2d_multicast(tb + b * DW_BLOCK, x_map, full, d.j0 + 64 * b, row, 0x3);
      }
    });
  }
  if (CL == 2) drain_ring(bars, it);
}

// A consumer warpgroup's k-steps of one tile: acc (dW rows i0 + 64·half.., WN columns) = Σ over
// the expert's rows. valid_last: the expert's rows in the last step (1..64). Rows past it are the
// next expert's (or zeros past M): this warpgroup zeroes them in its own dY column block
// (the only one it reads) once the stage has landed, so they add 0 · X; X's rows are left as
// they are (finite activations: a non-finite one there makes the step's loss non-finite anyway).
template <int WN, int CL>
__device__ __forceinline__ void dw_consume(float (&acc)[128], u32 base, u32 bars, int half, int ktiles, int valid_last, int& it) {
  const int t128 = threadIdx.x & 127;
  consume_ring<CL>(base, bars, ktiles, it, [&](int kt, u32 stage) {
    const u32 ta = stage + half * DW_BLOCK, tb = stage + A_BYTES;
    if (kt == ktiles - 1 && valid_last < BK) {
      // Whole 128-byte rows: the swizzle permutes 16-byte pieces within a row, never across rows.
      for (int q = valid_last * 8 + t128; q < BK * 8; q += 128) st_shared_zero16(ta + (q >> 3) * 128 + (q & 7) * 16);
      fence_proxy_async();  // the zeros, visible to the wgmmas' (async proxy) reads
      // Every thread's zeros, before the warpgroup's wgmmas (barriers 1 and 2: one per consumer warpgroup).
      if (half == 0) asm volatile("bar.sync 1, 128;" ::: "memory");
      else asm volatile("bar.sync 2, 128;" ::: "memory");
    }
    const u64 da = desc(ta, DW_BLOCK, 1024), db = desc(tb, DW_BLOCK, 1024);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) wgmma_k16<WN, 1, 1>(acc, da + ((kk * 2048) >> 4), db + ((kk * 2048) >> 4));
    wgmma_commit();
  });
}

// The persistent weight-product CTA (grid ≤ the SM count): a producer warpgroup and two consumer
// warpgroups (rows 0..63 and 64..127 of each 128 × 256 tile) over the CTA's tiles. With squares
// (beta 0 only; null otherwise), consumer warp v (0..7) of tile id t writes the Σ of the squares of
// the values it stored to squares[8t + v]: every tile is written, an expert without rows and a
// pair's phantom too (zeros), so one fixed-order reduction can add all 8·tiles partials (header:
// "Gradient norm"). dW holds E gradient addresses, 2E with twin (the first product's, then the
// second's: dy2_map's). CL = 2: one of a cluster's CTA pair (header: "Weight product in CTA
// pairs"), meeting the peer at a cluster barrier after the inits, as gemm_cta does.
template <typename G, int CL = 1>
__device__ __forceinline__ void dw_cta(const TensorMap& dy_map, const TensorMap& dy2_map, const TensorMap& x_map, G* const* __restrict__ dW,
                                       const int* __restrict__ off, int E, int M, int N, int K, int beta, float* __restrict__ squares,
                                       int twin, unsigned char* smem_raw) {
  const u32 base = (ggc::smem_addr(smem_raw) + 1023u) & ~1023u;
  const u32 bars = base + BAR_OFFSET;
  const int tid = threadIdx.x, wg = tid >> 7;
  if (tid == 0) init_ring<CL>(bars);
  if (CL == 2) cluster_sync();
  else __syncthreads();
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(PRODUCER_REGS));
    if (CL == 1 ? tid == 0 : tid < 32) {
      dw_produce<G, CL>(base, bars, reinterpret_cast<u64>(&dy_map), reinterpret_cast<u64>(&dy2_map), reinterpret_cast<u64>(&x_map), dW, off, E,
                        M, N, K, beta, twin);
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(CONSUMER_REGS));
  const int half = wg - 1;
  DwWalk<CL> walk(off, E, M, N, K, twin);
  int it = 0;
  for (DwTile d; walk.next(d);) {
    if (d.ktiles == 0 && beta) continue;  // no rows: the gradient keeps its value (beta 0: zeros below)
    float acc[128];
#pragma unroll
    for (int c = 0; c < 128; ++c) acc[c] = 0.f;
    const int cols = min(BN, K - d.j0), valid_last = d.rows - (d.ktiles - 1) * BK;
    if (cols <= BN / 2) dw_consume<128, CL>(acc, base, bars, half, d.ktiles, valid_last, it);
    else dw_consume<256, CL>(acc, base, bars, half, d.ktiles, valid_last, it);
    G* tile = dW[d.second * E + d.e] + (long long)d.i0 * K + d.j0;  // a phantom's (i0 ≥ N) stores nothing
    if (squares == nullptr) {
      store_tile(acc, tile, K, half, N - d.i0, cols, beta);
      continue;
    }
    float sq = store_tile<true>(acc, tile, K, half, N - d.i0, cols, 0);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, o);
    if ((threadIdx.x & 31) == 0) squares[8 * d.id + ((threadIdx.x - 128) >> 5)] = sq;
  }
}

}  // namespace ggt

// Y[M,N] = X_e · W_eᵀ per row block: x_map over X [M, K], w_maps[e] over W_e [N, K] with box (64, 128).
// grid min(ceil(N/BN)·(ceil(M/BM) + E), SMs).
extern "C" __global__ void __launch_bounds__(ggt::THREADS, 1)
grouped_tma_fwd_bf16(const __grid_constant__ ggt::TensorMap x_map, const ggt::TensorMap* __restrict__ w_maps, bf16* __restrict__ Y,
                     const int* __restrict__ off, int E, int M, int N, int K) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  ggt::plain_cta<true>(x_map, x_map, w_maps, Y, off, E, M, N, K, smem_raw);
}

// dX[M,K] = dY_e · W_e per row block: dy_map over dY [M, N], w_maps[e] over W_e [N, K] with box (64, 64).
// grid min(ceil(K/BN)·(ceil(M/BM) + E), SMs).
extern "C" __global__ void __launch_bounds__(ggt::THREADS, 1)
grouped_tma_dx_bf16(const __grid_constant__ ggt::TensorMap dy_map, const ggt::TensorMap* __restrict__ w_maps, bf16* __restrict__ dX,
                    const int* __restrict__ off, int E, int M, int N, int K) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  ggt::plain_cta<false>(dy_map, dy_map, w_maps, dX, off, E, M, K, N, smem_raw);
}

// dX[M,K] = dG_e · Wg_e + dU_e · Wu_e per row block, one reduction over 2N rounded once (header:
// "Gate-and-up data product"): dg_map, du_map over dG, dU [M, N]; w_maps the E gate maps, then the
// E up maps, each over [N, K] with box (64, 64). grid min(ceil(K/BN)·(ceil(M/BM) + E), SMs).
extern "C" __global__ void __launch_bounds__(ggt::THREADS, 1)
grouped_tma_dx_gate_up_bf16(const __grid_constant__ ggt::TensorMap dg_map, const __grid_constant__ ggt::TensorMap du_map,
                            const ggt::TensorMap* __restrict__ w_maps, bf16* __restrict__ dX, const int* __restrict__ off, int E, int M,
                            int N, int K) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  ggt::plain_cta<false, 1, ggt::GATE_UP_REDUCTION>(dg_map, du_map, w_maps, dX, off, E, M, K, 2 * N, smem_raw);
}

// G, U [M,N] = X_e · Wg_eᵀ, X_e · Wu_eᵀ and H = silu(G)·U per row block (header: "SwiGLU"): x_map over X
// [M, K]; w_maps the E gate maps, then the E up maps, each over [N, K] with box (64, 128). The walk
// runs 256 columns per 128 of N. grid min(ceil(N/128)·(ceil(M/BM) + E), SMs).
extern "C" __global__ void __launch_bounds__(ggt::THREADS, 1)
grouped_tma_fwd_swiglu_bf16(const __grid_constant__ ggt::TensorMap x_map, const ggt::TensorMap* __restrict__ w_maps, bf16* __restrict__ G,
                            bf16* __restrict__ U, bf16* __restrict__ H, const int* __restrict__ off, int E, int M, int N, int K) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  ggt::swiglu_cta(x_map, w_maps, G, U, H, off, E, M, N, K, smem_raw);
}

// The forward, data, gate-and-up data and SwiGLU products in CTA pairs (header: "CTA pairs"):
// clusters of 2 along the grid; grid 2·min(pair tiles, the 2-CTA clusters the device runs at
// once), pair tiles ceil(width / BN)·ceil((ceil(M/BM) + E) / 2) (width N, K, or 2·128·ceil(N/128)
// for SwiGLU).
extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(ggt::THREADS, 1)
grouped_tma_pair_fwd_bf16(const __grid_constant__ ggt::TensorMap x_map, const ggt::TensorMap* __restrict__ w_maps, bf16* __restrict__ Y,
                          const int* __restrict__ off, int E, int M, int N, int K) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  ggt::plain_cta<true, 2>(x_map, x_map, w_maps, Y, off, E, M, N, K, smem_raw);
}
extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(ggt::THREADS, 1)
grouped_tma_pair_dx_bf16(const __grid_constant__ ggt::TensorMap dy_map, const ggt::TensorMap* __restrict__ w_maps, bf16* __restrict__ dX,
                         const int* __restrict__ off, int E, int M, int N, int K) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  ggt::plain_cta<false, 2>(dy_map, dy_map, w_maps, dX, off, E, M, K, N, smem_raw);
}
extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(ggt::THREADS, 1)
grouped_tma_pair_dx_gate_up_bf16(const __grid_constant__ ggt::TensorMap dg_map, const __grid_constant__ ggt::TensorMap du_map,
                                 const ggt::TensorMap* __restrict__ w_maps, bf16* __restrict__ dX, const int* __restrict__ off, int E, int M,
                                 int N, int K) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  ggt::plain_cta<false, 2, ggt::GATE_UP_REDUCTION>(dg_map, du_map, w_maps, dX, off, E, M, K, 2 * N, smem_raw);
}
extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(ggt::THREADS, 1)
grouped_tma_pair_fwd_swiglu_bf16(const __grid_constant__ ggt::TensorMap x_map, const ggt::TensorMap* __restrict__ w_maps, bf16* __restrict__ G,
                                 bf16* __restrict__ U, bf16* __restrict__ H, const int* __restrict__ off, int E, int M, int N, int K) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  ggt::swiglu_cta<2>(x_map, w_maps, G, U, H, off, E, M, N, K, smem_raw);
}

// dW_e[N,K] = dY_eᵀ · X_e + beta·dW_e (f32 gradients): dy_map over dY [M, N], x_map over X [M, K],
// both with box (64, 64); dW the E gradients' addresses; squares null, or (beta 0) 8 f32 partials
// a tile, which the launcher adds up. grid min(E·ceil(N/BM)·ceil(K/BN), SMs).
extern "C" __global__ void __launch_bounds__(ggt::THREADS, 1)
grouped_tma_dw_bf16(const __grid_constant__ ggt::TensorMap dy_map, const __grid_constant__ ggt::TensorMap x_map, float* const* __restrict__ dW,
                    const int* __restrict__ off, int E, int M, int N, int K, int beta, float* __restrict__ squares) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  ggt::dw_cta(dy_map, dy_map, x_map, dW, off, E, M, N, K, beta, squares, 0, smem_raw);
}

// The same with bf16 gradients (the lean recipe with one micro-batch), rounded once.
extern "C" __global__ void __launch_bounds__(ggt::THREADS, 1)
grouped_tma_dw_bf16_gbf16(const __grid_constant__ ggt::TensorMap dy_map, const __grid_constant__ ggt::TensorMap x_map, bf16* const* __restrict__ dW,
                          const int* __restrict__ off, int E, int M, int N, int K, int beta, float* __restrict__ squares) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  ggt::dw_cta(dy_map, dy_map, x_map, dW, off, E, M, N, K, beta, squares, 0, smem_raw);
}

// The weight product in CTA pairs (header: "Weight product in CTA pairs"), f32 and bf16 gradients:
// the single kernels' arguments plus dy2_map and twin. twin 0: one product (dy2_map unused, dW E
// addresses), pairs of neighbouring row tiles; twin 1: two products over the same X (the experts'
// gate and up), dy_map over the first's dY and dy2_map over the second's, dW the first's E
// gradients then the second's E, a pair being the same tile of both. Squares: 8 partials a tile
// of 2 · (pair tiles). grid 2·min(pair tiles, the 2-CTA clusters the device runs at once), pair
// tiles E·ceil(K/BN)·(twin ? ceil(N/BM) : ceil(ceil(N/BM) / 2)).
extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(ggt::THREADS, 1)
grouped_tma_pair_dw_bf16(const __grid_constant__ ggt::TensorMap dy_map, const __grid_constant__ ggt::TensorMap dy2_map,
                         const __grid_constant__ ggt::TensorMap x_map, float* const* __restrict__ dW, const int* __restrict__ off, int E, int M,
                         int N, int K, int beta, float* __restrict__ squares, int twin) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  ggt::dw_cta<float, 2>(dy_map, dy2_map, x_map, dW, off, E, M, N, K, beta, squares, twin, smem_raw);
}
extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(ggt::THREADS, 1)
grouped_tma_pair_dw_bf16_gbf16(const __grid_constant__ ggt::TensorMap dy_map, const __grid_constant__ ggt::TensorMap dy2_map,
                               const __grid_constant__ ggt::TensorMap x_map, bf16* const* __restrict__ dW, const int* __restrict__ off, int E,
                               int M, int N, int K, int beta, float* __restrict__ squares, int twin) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  ggt::dw_cta<bf16, 2>(dy_map, dy2_map, x_map, dW, off, E, M, N, K, beta, squares, twin, smem_raw);
}
