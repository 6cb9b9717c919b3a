// Grouped expert GEMM on Hopper (sm_90a) with TMA copies and a producer warpgroup: the three
// products of grouped_gemm.cu (read its header first: products, the row-tile scheduler over the
// device offsets, shape rules). Forward and backward data use its row tiles and its epilogue
// (bf16 output, rounded once, overwritten; rows past the expert's end and columns past the width
// are not stored). All three products are persistent kernels: at most one CTA per SM, each
// walking a list of output tiles with the copy ring running on from tile to tile ("Scheduling"
// below; grouped_gemm_tma_dw.cuh, "Weight product"). Tested against the CPU backend and the wgmma set on an H100
// (2026-12-07); measured times per product are in ops/grouped_gemm.ts.
//
// Why another kernel: grouped_gemm_wgmma.cu copies operands with cp.async from the same threads
// that issue the wgmmas and meets at a CTA barrier every k-step; at the bench shapes it runs at
// ~45% of the 0.36 ms floor per product. Here the copies are the copy engine's, issued by one
// thread, and the MMA warps only wait on mbarriers.
//
// The CTA, its tile and ring, and the operands' layouts: grouped_gemm_tma.cuh. The weight product:
// grouped_gemm_tma_dw.cuh.
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
//   Why persistent (as the weight product, grouped_gemm_tma_dw.cuh): a CTA per tile (192 KiB of ring: one CTA per
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
//   If the main loops run at the ~470 TFLOP/s L2 cap of the weight product's estimate
//   (grouped_gemm_tma_dw.cuh; 1.18 µs a step), the same 3 µs a tile are −8% and −10% (737 → 681,
//   768 → 692 µs): ~10% a product.
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
// 1.82 ms. Measured (H100, 2026-12-07, bench gemm --grouped): 1.207 ms under tma, 1.053 under
// tma_pair, against 1.511 composed.
#include "grouped_gemm_tma.cuh"
#include "grouped_gemm_tma_dw.cuh"
#include "swiglu.cuh"

namespace ggt {

// ---- forward and data products: out[M, width] = A[M, red] · B_e (header: "Scheduling") ----

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
// the copy engine (grouped_gemm_tma.cuh's header: operands) before its first use here: the CTA's experts come in
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

// The weight product in CTA pairs (grouped_gemm_tma_dw.cuh: "Weight product in CTA pairs"), f32 and bf16 gradients:
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
