// Grouped expert GEMM: the three products of a linear layer applied per expert to the expert's
// block of rows, each in one launch for all experts (v1: mma.sync m16n8k16, cp.async pipeline).
//   forward       Y[M,N]  = X[M,K] · W_eᵀ      rows of expert e: [off[e]−off[0], off[e+1]−off[0])
//   backward data dX[M,K] = dY[M,N] · W_e
//   backward W    dW_e[N,K] = dY_eᵀ · X_e + beta·dW_e   (f32; beta 1 accumulates into the existing
//                 gradient, beta 0 overwrites it: a step's first write, autograd/lazy_grad_zero.ts)
// Row counts stay on the device: off is an i32 [E+1] prefix-sum array. The forward and data
// kernels are launched over the worst-case number of row tiles, ceil(M/BM) + E (Σ_e ceil(c_e/BM)
// ≤ M/BM + E), and each CTA finds its (expert, row tile) by walking off; CTAs past the last tile
// exit at once. The weight kernel runs one CTA per (N tile, K tile, expert) and loops over the
// expert's rows, which may be 0: the gradient is then left as it is (beta 1) or its tile is
// written with zeros (beta 0, so a gradient marked logically zero holds zeros afterwards).
//
// One templated main loop serves all three: C[i][j] = Σ_r A(i,r)·B(j,r), where each operand is
// "K-major" (r contiguous in memory: X, dY as A; W as B in forward) or "MN-major" (i or j
// contiguous: W in backward data, dY and X in the weight product). K-major tiles are stored
// [rows][BK] and read with ldmatrix; MN-major tiles [BK][rows] and read with ldmatrix.trans.
// Rows are padded by 16 bytes so the eight 16-byte rows of one ldmatrix land in distinct banks.
//
// Floors (FLOPs ÷ ~790 TFLOP/s, the dense bf16 rate an H100 SXM sustains): the bench shapes,
// 64 experts × ~768 rows (M = 49152), K = 2048, N = 1408: each product is 2·M·N·K = 283.5 GFLOP
// ≈ 0.36 ms; a MoE layer's routed experts (gate, up, down; forward + 2 backward) 2.55 TFLOP ≈ 3.2 ms.
// The weight product also reads and writes every expert's f32 gradient (64 × 1408 × 2048 × 8 B =
// 1.48 GB ≈ 0.44 ms at ~3.35 TB/s), so its floor is the larger of the two, ~0.44 ms; with beta 0
// it only writes it (0.74 GB ≈ 0.22 ms), under the FLOP floor.
// mma.sync peaks well below wgmma on Hopper, so this v1 is expected at ~50–60% of that floor.
//
// Shapes (asserted by the launcher, ops/grouped_gemm.ts): bf16 operands, K and N multiples of 64,
// every base address 16-byte aligned.
#include "common.cuh"
#include "grouped_gemm_common.cuh"

#if !defined(GG_BM) || !defined(GG_BN) || !defined(GG_BK) || !defined(GG_STAGES) || !defined(GG_THREADS) || !defined(GG_SMEM)
#error "GG_BM, GG_BN, GG_BK, GG_STAGES, GG_THREADS and GG_SMEM are set by ops/grouped_gemm.ts (GROUPED_GEMM_DEFINES)"
#endif

namespace gg {

typedef unsigned int u32;

constexpr int BM = GG_BM;          // output rows per CTA (tokens, or N in the weight product)
constexpr int BN = GG_BN;          // output columns per CTA
constexpr int BK = GG_BK;          // reduction step per pipeline stage
constexpr int STAGES = GG_STAGES;  // cp.async pipeline depth
constexpr int THREADS = GG_THREADS;
constexpr int WARPS_M = 2, WARPS_N = 4;
constexpr int WM = BM / WARPS_M;   // 64 rows per warp
constexpr int WN = BN / WARPS_N;   // 32 columns per warp
constexpr int MI = WM / 16;        // m16 tiles per warp
constexpr int NI = WN / 8;         // n8 tiles per warp
static_assert(THREADS == 32 * WARPS_M * WARPS_N, "one warp per (WARPS_M × WARPS_N) sub-tile");
static_assert(BM == 128 && BN == 128 && BK == 32, "the copy and fragment loops are written for 128×128×32 tiles");
static_assert(NI % 2 == 0, "B fragments are loaded two n8 tiles at a time");

// Padded row strides (elements) of the two tile layouts.
constexpr int KMAJ_STRIDE = BK + 8;   // [rows][BK]: 80 bytes
constexpr int MNMAJ_STRIDE = BM + 8;  // [BK][rows]: 272 bytes (BM == BN)
constexpr int KMAJ_BYTES = BM * KMAJ_STRIDE * 2;
constexpr int MNMAJ_BYTES = BK * MNMAJ_STRIDE * 2;
constexpr int TILE_BYTES = KMAJ_BYTES > MNMAJ_BYTES ? KMAJ_BYTES : MNMAJ_BYTES;
constexpr int STAGE_BYTES = 2 * TILE_BYTES;  // A then B
static_assert(GG_SMEM == STAGES * STAGE_BYTES, "GG_SMEM (ops/grouped_gemm.ts) must equal STAGES × 2 × the larger tile layout");
static_assert(TILE_BYTES % 16 == 0, "tiles start 16-byte aligned");

using ggc::smem_addr;
using ggc::cp_async16;
using ggc::cp_async_commit;
using ggc::cp_async_wait;
__device__ __forceinline__ void ldsm_x4(u32 addr, u32* r) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(u32 addr, u32* r) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}
// c += a·b for one 16×8×16 tile, bf16 in, f32 accumulate. Fragments (g = lane/4, t = lane%4):
//   A a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g);  C c0,c1 (g, 2t..2t+1), c2,c3 (g+8, 2t..2t+1)
__device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One pipeline stage of an operand: ROWS (= BM = BN) output rows × BK reduction steps.
// K-major: src points at (row 0, r 0), element (i, r) at src[i·ld + r]; tile [ROWS][KMAJ_STRIDE].
// MN-major: element (i, r) at src[r·ld + i]; tile [BK][MNMAJ_STRIDE].
// Valid: i < rows, r < red (both multiples of 8 where they bound a 16-byte piece); the rest is 0.
template <bool KMAJOR>
__device__ __forceinline__ void load_stage(u32 tile, const bf16* src, long long ld, int r0, int rows, int red, int tid) {
  if (KMAJOR) {
    constexpr int PIECES = BK / 8;  // 4 per row
#pragma unroll
    for (int s = 0; s < BM * PIECES / THREADS; ++s) {
      const int q = tid + s * THREADS;
      const int i = q / PIECES, p = q % PIECES;
      const int r = r0 + p * 8;
      const bool valid = i < rows && r < red;
      const bf16* g = valid ? src + (long long)i * ld + r : src;
      cp_async16(tile + (i * KMAJ_STRIDE + p * 8) * 2, g, valid);
    }
  } else {
    constexpr int PIECES = BM / 8;  // 16 per reduction row
#pragma unroll
    for (int s = 0; s < BK * PIECES / THREADS; ++s) {
      const int q = tid + s * THREADS;
      const int rr = q / PIECES, p = q % PIECES;
      const int r = r0 + rr, i = p * 8;
      const bool valid = r < red && i < rows;
      const bf16* g = valid ? src + (long long)r * ld + i : src;
      cp_async16(tile + (rr * MNMAJ_STRIDE + p * 8) * 2, g, valid);
    }
  }
}

// A fragment (16 output rows from i0, 16 reduction steps from k0) of an operand's stage tile.
template <bool KMAJOR>
__device__ __forceinline__ void load_a(u32* a, u32 tile, int i0, int k0, int lane) {
  if (KMAJOR) ldsm_x4(tile + ((i0 + (lane & 15)) * KMAJ_STRIDE + k0 + ((lane >> 4) << 3)) * 2, a);
  else ldsm_x4_t(tile + ((k0 + (lane & 7) + ((lane >> 4) << 3)) * MNMAJ_STRIDE + i0 + (((lane >> 3) & 1) << 3)) * 2, a);
}
// B fragments of two adjacent n8 tiles (columns j0..j0+15): b[0..1] for j0, b[2..3] for j0+8.
template <bool KMAJOR>
__device__ __forceinline__ void load_b(u32* b, u32 tile, int j0, int k0, int lane) {
  if (KMAJOR) ldsm_x4(tile + ((j0 + (lane & 7) + ((lane >> 4) << 3)) * KMAJ_STRIDE + k0 + (((lane >> 3) & 1) << 3)) * 2, b);
  else ldsm_x4_t(tile + ((k0 + (lane & 7) + (((lane >> 3) & 1) << 3)) * MNMAJ_STRIDE + j0 + ((lane >> 4) << 3)) * 2, b);
}

// acc[mi][ni][4] = Σ_{r < red} A(i, r)·B(j, r) over this CTA's BM × BN tile. A and B point at the
// tile's (0, 0); rowsA / rowsB bound the valid i / j. red > 0.
template <bool A_K, bool B_K>
__device__ __forceinline__ void mainloop(float (&acc)[MI][NI][4], unsigned char* smem, const bf16* A, long long lda, int rowsA,
                                         const bf16* B, long long ldb, int rowsB, int red) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N;
  const u32 base = smem_addr(smem);
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[mi][ni][c] = 0.f;

  const int ktiles = (red + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < ktiles) {
      const u32 st = base + s * STAGE_BYTES;
      load_stage<A_K>(st, A, lda, s * BK, rowsA, red, tid);
      load_stage<B_K>(st + TILE_BYTES, B, ldb, s * BK, rowsB, red, tid);
    }
    cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    // Groups committed so far: STAGES − 1 + kt; at most STAGES − 2 pending ⇒ stage kt has landed.
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage kt visible to all; everyone is done reading stage kt − 1
    const int next = kt + STAGES - 1;
    if (next < ktiles) {
      const u32 st = base + (next % STAGES) * STAGE_BYTES;  // the stage read in iteration kt − 1
      load_stage<A_K>(st, A, lda, next * BK, rowsA, red, tid);
      load_stage<B_K>(st + TILE_BYTES, B, ldb, next * BK, rowsB, red, tid);
    }
    cp_async_commit();
    const u32 ta = base + (kt % STAGES) * STAGE_BYTES, tb = ta + TILE_BYTES;
#pragma unroll
    for (int k0 = 0; k0 < BK; k0 += 16) {
      u32 a[MI][4], b[NI / 2][4];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) load_a<A_K>(a[mi], ta, wm * WM + mi * 16, k0, lane);
#pragma unroll
      for (int nj = 0; nj < NI / 2; ++nj) load_b<B_K>(b[nj], tb, wn * WN + nj * 16, k0, lane);
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) mma16816(acc[mi][ni], a[mi], b[ni / 2][(ni & 1) * 2], b[ni / 2][(ni & 1) * 2 + 1]);
    }
  }
  cp_async_wait<0>();  // no copy may still target shared memory when the CTA exits
}

// Stores the tile as bf16 (rounded once) at C (the tile's (0, 0)), rows < rows, columns < cols.
__device__ __forceinline__ void store_bf16(const float (&acc)[MI][NI][4], bf16* C, long long ldc, int rows, int cols) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int i = wm * WM + mi * 16 + g + 8 * h;
      if (i >= rows) continue;
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) {
        const int j = wn * WN + ni * 8 + 2 * t;
        if (j >= cols) continue;  // cols is even, so j < cols ⇒ j + 1 < cols
        u32 packed;
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(acc[mi][ni][2 * h + 1]), "f"(acc[mi][ni][2 * h]));
        *reinterpret_cast<u32*>(C + (long long)i * ldc + j) = packed;
      }
    }
}

// C (f32) = the tile + beta·C, rows < rows, columns < cols (beta 0: C is not read). Each element
// belongs to one thread: no atomics.
__device__ __forceinline__ void store_f32(const float (&acc)[MI][NI][4], float* C, long long ldc, int rows, int cols, int beta) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int i = wm * WM + mi * 16 + g + 8 * h;
      if (i >= rows) continue;
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) {
        const int j = wn * WN + ni * 8 + 2 * t;
        if (j >= cols) continue;
        float2* p = reinterpret_cast<float2*>(C + (long long)i * ldc + j);
        float2 v = make_float2(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
        if (beta) {
          const float2 old = *p;
          v.x += old.x;
          v.y += old.y;
        }
        *p = v;
      }
    }
}

}  // namespace gg

// Y[M,N] = X_e · W_eᵀ per row block. grid (ceil(N/BN), ceil(M/BM) + E).
extern "C" __global__ void __launch_bounds__(gg::THREADS, 2)
grouped_fwd_bf16(bf16* __restrict__ Y, const bf16* __restrict__ X, const bf16* const* __restrict__ W,
                 const int* __restrict__ off, int E, int M, int N, int K) {
  extern __shared__ __align__(128) unsigned char smem[];
  int e, row0, rowEnd;
  if (!ggc::find_row_tile<gg::BM>(off, E, M, blockIdx.y, e, row0, rowEnd)) return;
  const int j0 = blockIdx.x * gg::BN;
  float acc[gg::MI][gg::NI][4];
  gg::mainloop<true, true>(acc, smem, X + (long long)row0 * K, K, rowEnd - row0, W[e] + (long long)j0 * K, K, N - j0, K);
  gg::store_bf16(acc, Y + (long long)row0 * N + j0, N, rowEnd - row0, N - j0);
}

// dX[M,K] = dY_e · W_e per row block (W_e [N,K] read N-major). grid (ceil(K/BN), ceil(M/BM) + E).
extern "C" __global__ void __launch_bounds__(gg::THREADS, 2)
grouped_dx_bf16(bf16* __restrict__ dX, const bf16* __restrict__ dY, const bf16* const* __restrict__ W,
                const int* __restrict__ off, int E, int M, int N, int K) {
  extern __shared__ __align__(128) unsigned char smem[];
  int e, row0, rowEnd;
  if (!ggc::find_row_tile<gg::BM>(off, E, M, blockIdx.y, e, row0, rowEnd)) return;
  const int j0 = blockIdx.x * gg::BN;
  float acc[gg::MI][gg::NI][4];
  gg::mainloop<true, false>(acc, smem, dY + (long long)row0 * N, N, rowEnd - row0, W[e] + j0, K, K - j0, N);
  gg::store_bf16(acc, dX + (long long)row0 * K + j0, K, rowEnd - row0, K - j0);
}

// dW_e[N,K] = dY_eᵀ · X_e over the expert's rows + beta·dW_e (beta 0 or 1). grid (ceil(K/BN), ceil(N/BM), E).
extern "C" __global__ void __launch_bounds__(gg::THREADS, 2)
grouped_dw_bf16(float* const* __restrict__ dW, const bf16* __restrict__ dY, const bf16* __restrict__ X,
                const int* __restrict__ off, int E, int M, int N, int K, int beta) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int e = blockIdx.z;
  int s, en;
  ggc::expert_rows(off, e, M, s, en);
  if (en == s && beta) return;  // no rows: the gradient keeps its value
  const int i0 = blockIdx.y * gg::BM, j0 = blockIdx.x * gg::BN;
  float acc[gg::MI][gg::NI][4];
  if (en == s) {
    // No rows and beta 0: the product over no rows, zeros.
#pragma unroll
    for (int mi = 0; mi < gg::MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < gg::NI; ++ni)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[mi][ni][c] = 0.f;
  } else {
    gg::mainloop<false, false>(acc, smem, dY + (long long)s * N + i0, N, N - i0, X + (long long)s * K + j0, K, K - j0, en - s);
  }
  gg::store_f32(acc, dW[e] + (long long)i0 * K + j0, K, N - i0, K - j0, beta);
}
