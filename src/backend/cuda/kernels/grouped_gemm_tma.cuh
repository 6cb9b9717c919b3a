// The machinery the tma set's grouped expert GEMM kernels share (grouped_gemm_tma.cu: the
// forward, data, SwiGLU and gate-and-up data products and every entry point;
// grouped_gemm_tma_dw.cuh: the weight product): the CTA's roles and tile, the operands' layouts,
// mbarriers, TMA copies (multicast in 2-CTA clusters), wgmma, the bf16/f32 epilogue, the copy ring
// that all products run, and the persistent walks' rotation. No standard headers (NVRTC and nvcc
// alike).
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
#pragma once
#include "common.cuh"
#include "grouped_gemm_common.cuh"

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

// ---- clusters (the tma_pair kernels, grouped_gemm_tma.cu's header: "CTA pairs") ----
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
// (grouped_gemm_tma.cu's header: "CTA pairs").
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
// together while lane 0 issues, then meets at __syncwarp: grouped_gemm_tma.cu's header "CTA pairs", why a warp.
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
// without waiting): grouped_gemm_tma.cu's header "CTA pairs", the end.
__device__ __forceinline__ void drain_ring(u32 bars, int it) {
  for (int k = 0; k < STAGES; ++k, ++it)
    if (it >= STAGES) mbar_wait(empty_bar(bars, it % STAGES), (it / STAGES - 1) & 1);
}

// Gives stage s back: to this CTA's producer, and with CL = 2 to the peer's, whose multicast
// copies write this stage here too (grouped_gemm_tma.cu's header: "CTA pairs").
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


// Tile of CTA blockIdx.x in round r of a persistent walk (grouped_gemm_tma.cu's header:
// "Scheduling"): the G CTAs of round r take tiles rG..rG + G − 1, CTA b the (b + r) mod G-th, so
// a CTA's column tile moves every round. The tile grows with r, so a CTA stops at its first tile ≥ the total.
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

}  // namespace ggt
