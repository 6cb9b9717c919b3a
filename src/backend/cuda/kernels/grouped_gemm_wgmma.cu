// Grouped expert GEMM on Hopper warpgroup MMA (sm_90a): the same three products, launch grids,
// tile scheduler and shape rules as grouped_gemm.cu (read its header first), with the main loop
// on wgmma m64n128k16 instead of mma.sync.
//
// A CTA is two warpgroups (256 threads) computing a 128 × 128 output tile; warpgroup wg owns
// rows 64·wg.. of it (64 f32 accumulators a thread). Operands are copied with cp.async (16-byte
// pieces, zero-filled past the expert's rows or the matrix edge: the experts' weights live at
// unrelated addresses, so one TMA map per expert would be needed) into 128-byte-swizzled tiles,
// the layouts wgmma reads through descriptors (mla_attention_hopper.cuh documents them):
//   K-major (X, dY as A; W as B in forward): 128 rows × 64 k = 128 rows of 128 bytes, 16-byte
//     piece p of row r at r·128 + ((p ^ r%8)·16); descriptor SBO 1024, a k16 step +32 bytes.
//   MN-major (W in backward data; dY and X in the weight product): 64 k rows × 128 values as two
//     64-value column blocks of 64 rows × 128 bytes; piece p of row r at (p/8)·8192 + r·128 +
//     ((p%8 ^ r%8)·16); descriptor LBO 8192 (next column block), SBO 1024, a k16 step +2048.
// Pipeline: STAGES stage buffers, copies DIST = STAGES − 2 stages ahead. Each iteration waits for
// its stage's copies, fences them into the async proxy, and after a CTA barrier issues 4 wgmmas
// and keeps one wgmma group in flight (wait_group 1). The barrier at iteration kt comes after
// every warpgroup's wait at kt − 1, so group kt − 2 is complete everywhere and its buffer, slot
// (kt + DIST) % STAGES, may be refilled.
//
// Floor: as grouped_gemm.cu (each bench-shape product 283.5 GFLOP ≈ 0.36 ms at ~790 TFLOP/s).
#include "common.cuh"
#include "grouped_gemm_common.cuh"

#if !defined(GGW_BM) || !defined(GGW_BN) || !defined(GGW_BK) || !defined(GGW_STAGES) || !defined(GGW_THREADS) || !defined(GGW_SMEM) || \
    !defined(GGW_DW_STAGES) || !defined(GGW_DW_BLOCKS) || !defined(GGW_DW_SMEM)
#error "GGW_BM, GGW_BN, GGW_BK, GGW_STAGES, GGW_THREADS, GGW_SMEM and GGW_DW_* are set by ops/grouped_gemm.ts (GROUPED_GEMM_WGMMA_DEFINES)"
#endif

namespace ggw {

typedef unsigned int u32;
typedef unsigned long long u64;

constexpr int BM = GGW_BM, BN = GGW_BN, BK = GGW_BK, THREADS = GGW_THREADS;
// The weight product runs GGW_DW_BLOCKS CTAs per SM with GGW_DW_STAGES stages each: its reduction
// is one expert's rows (~768: 12 k-steps) and its epilogue reads and writes a 64 KiB f32 tile
// (only writes it with beta 0), about as long as the main loop, so a second resident CTA computes
// while the first one's epilogue waits on memory (with one CTA per SM the two were serialised).
constexpr int STAGES = GGW_STAGES, DW_STAGES = GGW_DW_STAGES;
constexpr int TILE_BYTES = BM * BK * 2;           // either layout: 16 KiB
constexpr int STAGE_BYTES = 2 * TILE_BYTES;       // A then B
constexpr int MN_BLOCK = BK * 128;                // one 64-value column block of an MN-major tile
static_assert(BM == 128 && BN == 128 && BK == 64 && THREADS == 256, "the copy, descriptor and epilogue code is written for 128×128×64 tiles, two warpgroups");
static_assert(STAGES >= 3 && DW_STAGES >= 3, "one stage computing, one draining, at least one in flight");
static_assert(GGW_SMEM == STAGES * STAGE_BYTES + 1024, "GGW_SMEM (ops/grouped_gemm.ts): the stages plus 1024 bytes to align the window");
static_assert(GGW_DW_SMEM == DW_STAGES * STAGE_BYTES + 1024, "GGW_DW_SMEM (ops/grouped_gemm.ts): the weight product's stages plus 1024 bytes");

__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }

// Shared-memory matrix descriptor, 128-byte swizzle (layout type 1 in bits 62-63).
__device__ __forceinline__ u64 desc(u32 addr, u32 lead_bytes, u32 stride_bytes) {
  return static_cast<u64>((addr & 0x3FFFF) >> 4) | (static_cast<u64>(lead_bytes >> 4) << 16) |
         (static_cast<u64>(stride_bytes >> 4) << 32) | (1ull << 62);
}

#define GGW_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define GGW_D64 GGW_D8(0), GGW_D8(8), GGW_D8(16), GGW_D8(24), GGW_D8(32), GGW_D8(40), GGW_D8(48), GGW_D8(56)

// d (64×128 f32) += A (64×16) · B (16×128), both from shared memory; TA / TB: 0 K-major, 1 MN-major.
// Accumulator layout, warp w of the warpgroup (g = lane/4, t = lane%4): d[4j+0..1] = row 16w+g,
// columns 8j+2t..+1; d[4j+2..3] = row 16w+g+8, same columns.
template <int TA, int TB>
__device__ __forceinline__ void wgmma_m64n128k16(float* d, u64 a_desc, u64 b_desc) {
  // scale-d is the predicate p, always true: d accumulates (the caller zeroes it first).
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, %66, %67;\n"
      "}\n"
      : GGW_D64
      : "l"(a_desc), "l"(b_desc), "n"(TA), "n"(TB));
}

// One stage of an operand (element (i, r) of the tile's 128 output rows × BK reduction steps).
// K-major: at src[i·ld + r]; MN-major: at src[r·ld + i]. Valid: i < rows, r < red (multiples of 8
// where they bound a 16-byte piece); the rest is zero-filled.
template <bool KMAJOR>
__device__ __forceinline__ void load_stage(u32 tile, const bf16* src, long long ld, int r0, int rows, int red, int tid) {
#pragma unroll
  for (int s = 0; s < (BM * BK / 8) / THREADS; ++s) {
    const int q = tid + s * THREADS;
    if (KMAJOR) {
      const int i = q >> 3, p = q & 7, r = r0 + p * 8;
      const bool valid = i < rows && r < red;
      ggc::cp_async16(tile + i * 128 + ((p ^ (i & 7)) << 4), valid ? src + (long long)i * ld + r : src, valid);
    } else {
      const int rr = q >> 4, p = q & 15, r = r0 + rr, i = p * 8;
      const bool valid = r < red && i < rows;
      ggc::cp_async16(tile + (p >> 3) * MN_BLOCK + rr * 128 + (((p & 7) ^ (rr & 7)) << 4), valid ? src + (long long)r * ld + i : src, valid);
    }
  }
}

// Descriptor of k16 step kk of a stage tile: A (this warpgroup's 64 rows) or B (all 128 columns).
template <bool KMAJOR>
__device__ __forceinline__ u64 desc_a(u32 tile, int wg, int kk) {
  return KMAJOR ? desc(tile + wg * 64 * 128 + kk * 32, 16, 1024) : desc(tile + wg * MN_BLOCK + kk * 2048, MN_BLOCK, 1024);
}
template <bool KMAJOR>
__device__ __forceinline__ u64 desc_b(u32 tile, int kk) {
  return KMAJOR ? desc(tile + kk * 32, 16, 1024) : desc(tile + kk * 2048, MN_BLOCK, 1024);
}

// acc = Σ_{r < red} A(i, r)·B(j, r) for this thread's part of the 128 × 128 tile; red > 0.
// NSTAGES stage buffers, copies DIST = NSTAGES − 2 stages ahead.
template <int NSTAGES, bool A_K, bool B_K>
__device__ __forceinline__ void mainloop(float (&acc)[64], unsigned char* smem_raw, const bf16* A, long long lda, int rowsA,
                                         const bf16* B, long long ldb, int rowsB, int red) {
  constexpr int DIST = NSTAGES - 2;
  const int tid = threadIdx.x, wg = tid >> 7;
  const u32 base = (ggc::smem_addr(smem_raw) + 1023u) & ~1023u;  // the window is only 16-byte aligned
#pragma unroll
  for (int c = 0; c < 64; ++c) acc[c] = 0.f;
  const int ktiles = (red + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < DIST; ++s) {
    if (s < ktiles) {
      const u32 st = base + s * STAGE_BYTES;
      load_stage<A_K>(st, A, lda, s * BK, rowsA, red, tid);
      load_stage<B_K>(st + TILE_BYTES, B, ldb, s * BK, rowsB, red, tid);
    }
    ggc::cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    // Committed so far: DIST + kt groups; at most DIST − 1 pending ⇒ stage kt has landed.
    ggc::cp_async_wait<DIST - 1>();
    fence_proxy_async();  // this thread's copies, visible to the wgmma (async) proxy
    __syncthreads();      // everyone's copies of stage kt; every wgmma group ≤ kt − 2 complete
    const int next = kt + DIST;
    if (next < ktiles) {
      const u32 st = base + (next % NSTAGES) * STAGE_BYTES;
      load_stage<A_K>(st, A, lda, next * BK, rowsA, red, tid);
      load_stage<B_K>(st + TILE_BYTES, B, ldb, next * BK, rowsB, red, tid);
    }
    ggc::cp_async_commit();
    const u32 ta = base + (kt % NSTAGES) * STAGE_BYTES, tb = ta + TILE_BYTES;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) wgmma_m64n128k16<A_K ? 0 : 1, B_K ? 0 : 1>(acc, desc_a<A_K>(ta, wg, kk), desc_b<B_K>(tb, kk));
    wgmma_commit();
    wgmma_wait<1>();
  }
  wgmma_wait<0>();
  ggc::cp_async_wait<0>();  // no copy may still target shared memory when the CTA exits
}

// Row and column (within the tile) of accumulator pair 2·(2j + h) of this thread.
__device__ __forceinline__ void acc_pos(int j, int h, int& i, int& col) {
  const int tid = threadIdx.x, wg = tid >> 7, w = (tid >> 5) & 3, lane = tid & 31;
  i = wg * 64 + w * 16 + (lane >> 2) + 8 * h;
  col = 8 * j + 2 * (lane & 3);
}

// Calls f(i, col, lo, hi) for each of this thread's accumulator pairs inside the rows × cols
// corner of the tile: (lo, hi) are the tile's (i, col) and (i, col + 1); cols is even, so
// col < cols ⇒ col + 1 < cols.
template <typename F>
__device__ __forceinline__ void for_each_pair(const float (&acc)[64], int rows, int cols, F f) {
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int i, col;
      acc_pos(j, h, i, col);
      if (i >= rows || col >= cols) continue;
      f(i, col, acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
    }
}

__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
  u32 packed;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(hi), "f"(lo));
  return packed;
}

__device__ __forceinline__ void store_bf16(const float (&acc)[64], bf16* C, long long ldc, int rows, int cols) {
  for_each_pair(acc, rows, cols, [&](int i, int col, float lo, float hi) {
    *reinterpret_cast<u32*>(C + (long long)i * ldc + col) = pack_bf16x2(lo, hi);
  });
}

// C (f32) = acc + beta·C (beta 0: C is not read).
__device__ __forceinline__ void store_f32(const float (&acc)[64], float* C, long long ldc, int rows, int cols, int beta) {
  for_each_pair(acc, rows, cols, [&](int i, int col, float lo, float hi) {
    float2* p = reinterpret_cast<float2*>(C + (long long)i * ldc + col);
    float2 v = make_float2(lo, hi);
    if (beta) {
      const float2 old = *p;
      v.x += old.x;
      v.y += old.y;
    }
    *p = v;
  });
}

// C (bf16) = round(acc + beta·C): the lean recipe's bf16 gradients, rounded once per product as a
// cuBLASLt product with that beta rounds them.
__device__ __forceinline__ void store_grad_bf16(const float (&acc)[64], bf16* C, long long ldc, int rows, int cols, int beta) {
  for_each_pair(acc, rows, cols, [&](int i, int col, float lo, float hi) {
    u32* p = reinterpret_cast<u32*>(C + (long long)i * ldc + col);
    if (beta) {
      const u32 old = *p;
      lo += __uint_as_float(old << 16);
      hi += __uint_as_float(old & 0xFFFF0000u);
    }
    *p = pack_bf16x2(lo, hi);
  });
}

inline __device__ void store_acc(const float (&acc)[64], float* C, long long ldc, int rows, int cols, int beta) { store_f32(acc, C, ldc, rows, cols, beta); }
inline __device__ void store_acc(const float (&acc)[64], bf16* C, long long ldc, int rows, int cols, int beta) { store_grad_bf16(acc, C, ldc, rows, cols, beta); }

// dW_e[N,K] = dY_eᵀ · X_e over the expert's rows + beta·dW_e (beta 0 or 1), G the gradient's
// element type. An expert with no rows keeps its gradient (beta 1) or gets zeros (beta 0).
template <typename G>
__device__ __forceinline__ void dw_tile(G* const* __restrict__ dW, const bf16* __restrict__ dY, const bf16* __restrict__ X,
                                        const int* __restrict__ off, int M, int N, int K, int beta, unsigned char* smem_raw) {
  const int e = blockIdx.z;
  int s, en;
  ggc::expert_rows(off, e, M, s, en);
  if (en == s && beta) return;  // no rows: the gradient keeps its value
  const int i0 = blockIdx.y * BM, j0 = blockIdx.x * BN;
  float acc[64];
  if (en == s) {
#pragma unroll
    for (int c = 0; c < 64; ++c) acc[c] = 0.f;  // no rows and beta 0: the product over no rows
  } else {
    mainloop<DW_STAGES, false, false>(acc, smem_raw, dY + (long long)s * N + i0, N, N - i0, X + (long long)s * K + j0, K, K - j0, en - s);
  }
  store_acc(acc, dW[e] + (long long)i0 * K + j0, K, N - i0, K - j0, beta);
}

}  // namespace ggw

// Y[M,N] = X_e · W_eᵀ per row block. grid (ceil(N/BN), ceil(M/BM) + E).
extern "C" __global__ void __launch_bounds__(ggw::THREADS, 1)
grouped_wgmma_fwd_bf16(bf16* __restrict__ Y, const bf16* __restrict__ X, const bf16* const* __restrict__ W,
                       const int* __restrict__ off, int E, int M, int N, int K) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  int e, row0, rowEnd;
  if (!ggc::find_row_tile<ggw::BM>(off, E, M, blockIdx.y, e, row0, rowEnd)) return;
  const int j0 = blockIdx.x * ggw::BN;
  float acc[64];
  ggw::mainloop<ggw::STAGES, true, true>(acc, smem_raw, X + (long long)row0 * K, K, rowEnd - row0, W[e] + (long long)j0 * K, K, N - j0, K);
  ggw::store_bf16(acc, Y + (long long)row0 * N + j0, N, rowEnd - row0, N - j0);
}

// dX[M,K] = dY_e · W_e per row block. grid (ceil(K/BN), ceil(M/BM) + E).
extern "C" __global__ void __launch_bounds__(ggw::THREADS, 1)
grouped_wgmma_dx_bf16(bf16* __restrict__ dX, const bf16* __restrict__ dY, const bf16* const* __restrict__ W,
                      const int* __restrict__ off, int E, int M, int N, int K) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  int e, row0, rowEnd;
  if (!ggc::find_row_tile<ggw::BM>(off, E, M, blockIdx.y, e, row0, rowEnd)) return;
  const int j0 = blockIdx.x * ggw::BN;
  float acc[64];
  ggw::mainloop<ggw::STAGES, true, false>(acc, smem_raw, dY + (long long)row0 * N, N, rowEnd - row0, W[e] + j0, K, K - j0, N);
  ggw::store_bf16(acc, dX + (long long)row0 * K + j0, K, rowEnd - row0, K - j0);
}

// dW_e[N,K] = dY_eᵀ · X_e over the expert's rows + beta·dW_e, f32 gradients. grid (ceil(K/BN), ceil(N/BM), E).
extern "C" __global__ void __launch_bounds__(ggw::THREADS, GGW_DW_BLOCKS)
grouped_wgmma_dw_bf16(float* const* __restrict__ dW, const bf16* __restrict__ dY, const bf16* __restrict__ X,
                      const int* __restrict__ off, int E, int M, int N, int K, int beta) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  ggw::dw_tile(dW, dY, X, off, M, N, K, beta, smem_raw);
}

// The same with bf16 gradients (the lean recipe with one micro-batch).
extern "C" __global__ void __launch_bounds__(ggw::THREADS, GGW_DW_BLOCKS)
grouped_wgmma_dw_bf16_gbf16(bf16* const* __restrict__ dW, const bf16* __restrict__ dY, const bf16* __restrict__ X,
                            const int* __restrict__ off, int E, int M, int N, int K, int beta) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  ggw::dw_tile(dW, dY, X, off, M, N, K, beta, smem_raw);
}
