// The tma set's weight product (grouped_tma_dw_bf16 / _gbf16, and in CTA pairs
// grouped_tma_pair_dw_bf16 / _gbf16; entry points in grouped_gemm_tma.cu): its tile walks, copies,
// last-step zeroing and epilogue, on grouped_gemm_tma.cuh's ring. Tested against the CPU backend
// and the wgmma set on an H100; measured times in ops/grouped_gemm.ts and below.
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
// H100), the L2-bound rate the forward had before its pairs (grouped_gemm_tma.cu, "CTA pairs", which took it to
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
// The protocol is the forward pairs' (grouped_gemm_tma.cu, "CTA pairs"): each stage's full barrier counts all 48
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
#pragma once
#include "grouped_gemm_tma.cuh"

namespace ggt {

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
